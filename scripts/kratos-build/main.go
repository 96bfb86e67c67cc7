// Command kratos is Ory Kratos' own command tree, unchanged: the webhook
// jsonnet evaluator re-executes this binary, so it must be cmd.Execute().
package main

import (
	"os"

	"github.com/ory/kratos/cmd"
)

func main() {
	os.Exit(cmd.Execute())
}
