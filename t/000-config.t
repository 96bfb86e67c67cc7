# The module loads into Debian's nginx, the shipped example configuration
# passes "nginx -t", and every bad directive value fails with a message that
# names it.

use strict;
use warnings;

use Test::More;
use Gate::Test;

my $t = Gate::Test->new;

# conf/nginx/gate.conf as scripts/run renders it
sub example_conf {
    open my $fh, '<', $t->root . '/conf/nginx/gate.conf' or die $!;
    my $conf = do { local $/; <$fh> };
    my %v = (
        MODULE => '%%MODULE%%', RUNDIR => '%%TESTDIR%%',
        USER => ($> == 0 ? 'user root;' : ''), REDIS_PORT => $t->port('REDIS'),
        KRATOS_PUBLIC_PORT => $t->port('KRATOS'), APP_PORT => $t->port('APP'),
        HTTP_PORT => '%%PORT_HTTP%%', KRATOS_ADMIN_PORT => $t->port('KADMIN'),
        PG_HOST => '/tmp', PG_PORT => 5432, HOOK_SECRET => 'a-test-hook-secret-0123',
    );
    $conf =~ s/%%(\w+)%%/$v{$1} \/\/ "%%$1%%"/ge;
    $conf =~ s{%%TESTDIR%%/nginx/}{%%TESTDIR%%/}g;
    return $conf;
}

my ($rc, $out) = $t->nginx_test_config(example_conf());
is $rc, 0, 'the example configuration passes nginx -t with the module loaded'
    or diag $out;
like $out, qr/syntax is ok/, 'nginx -t reports the syntax is ok';

sub conf_with {
    my ($http, $location) = @_;
    $location //= '';
    return <<"EOF";
%%GLOBALS%%
http {
    %%HTTP_GLOBALS%%
    $http
    server {
        listen 127.0.0.1:%%PORT_HTTP%%;
        location / {
            $location
            return 204;
        }
    }
}
EOF
}

my $redis = 'gate_redis 127.0.0.1:6379;';

my @bad = (
    [ 'gate_redis with a host name',
      conf_with('gate_redis localhost:6379;'), qr/"localhost:6379"/ ],
    [ 'gate_redis with a port out of range',
      conf_with('gate_redis 127.0.0.1:70000;'), qr/"127\.0\.0\.1:70000"/ ],
    [ 'gate_redis with an unknown parameter',
      conf_with('gate_redis 127.0.0.1:6379 speed=fast;'), qr/"speed=fast"/ ],
    [ 'gate_redis with a bad timeout',
      conf_with('gate_redis 127.0.0.1:6379 timeout=soon;'), qr/"timeout=soon"/ ],
    [ 'gate_redis with a bad database',
      conf_with('gate_redis 127.0.0.1:6379 database=x;'), qr/"database=x"/ ],
    [ 'gate_redis twice',
      conf_with("$redis $redis"), qr/"gate_redis" directive is duplicate/ ],
    [ 'gate_cache without a size',
      conf_with("$redis gate_cache zone=gate;"), qr/"zone=gate"/ ],
    [ 'gate_cache with a zero ttl',
      conf_with("$redis gate_cache zone=gate:1m ttl=0;"), qr/"ttl=0"/ ],
    [ 'gate_cache with an unknown parameter',
      conf_with("$redis gate_cache zone=gate:1m colour=blue;"), qr/"colour=blue"/ ],
    [ 'gate_auth with an unknown value',
      conf_with($redis, 'gate_auth bogus;'), qr/invalid value "bogus"/ ],
    [ 'gate_auth token without gate_redis',
      conf_with('', 'gate_auth token;'), qr/requires "gate_redis"/ ],
    [ 'gate_scope with a quote',
      conf_with($redis, 'gate_scope \'re"ad\';'), qr/invalid scope "re"ad"/ ],
    [ 'gate_tenant with an unknown source',
      conf_with($redis, 'gate_tenant cookie;'), qr/invalid value "cookie"/ ],
    [ 'gate_tenant header without a name',
      conf_with($redis, 'gate_tenant header;'), qr/needs a header name/ ],
    [ 'gate_postgres with a host name',
      conf_with('gate_postgres "host=db.example.com dbname=gate";'), qr/"db\.example\.com"/ ],
    [ 'gate_postgres with a broken conninfo',
      conf_with('gate_postgres "host=/tmp dbname";'), qr/invalid PostgreSQL connection string/ ],
    [ 'gate_postgres with a bad pool',
      conf_with('gate_postgres "host=/tmp" pool=0;'), qr/"pool=0"/ ],
    [ 'gate_api with an unknown value',
      conf_with("$redis gate_postgres \"host=/tmp\"; gate_kratos_admin /k;", 'gate_auth secret_key; gate_api widgets;'),
      qr/invalid value "widgets"/ ],
    [ 'gate_api identities without a secret key',
      conf_with("$redis gate_postgres \"host=/tmp\"; gate_kratos_admin /k;", 'gate_auth token; gate_api identities;'),
      qr/requires "gate_auth secret_key"/ ],
    [ 'gate_flow with an unknown value',
      conf_with("$redis gate_postgres \"host=/tmp\";", 'gate_tenant header X-Gate-Tenant; gate_flow maybe;'),
      qr/invalid value "maybe"/ ],
    [ 'gate_flow without a tenant source',
      conf_with("$redis gate_postgres \"host=/tmp\";", 'gate_flow check;'),
      qr/"gate_flow" requires "gate_tenant header"/ ],
    [ 'gate_flow init without gate_kratos_public',
      conf_with("$redis gate_postgres \"host=/tmp\";", 'gate_tenant header X-T; gate_flow init;'),
      qr/requires "gate_kratos_public"/ ],
    [ 'gate_hook with an unknown value',
      conf_with("$redis gate_postgres \"host=/tmp\";", 'gate_hook signup;'), qr/invalid value "signup"/ ],
    [ 'gate_hook without a secret',
      conf_with("$redis gate_postgres \"host=/tmp\";", 'gate_hook login;'), qr/requires "gate_hook_secret"/ ],
    [ 'gate_hook with a short secret',
      conf_with("$redis gate_postgres \"host=/tmp\"; gate_hook_secret short;", 'gate_hook login;'),
      qr/16 characters/ ],
    [ 'gate_tenant host without a suffix',
      conf_with("$redis gate_postgres \"host=/tmp\";", 'gate_tenant host;'), qr/needs a domain suffix/ ],
    [ 'gate_auth with a second value other than session',
      conf_with($redis, 'gate_auth secret_key token;'), qr/invalid value "token"/ ],
    [ 'gate_auth session without gate_kratos_public',
      conf_with("$redis gate_postgres \"host=/tmp\";", 'gate_auth session;'), qr/requires "gate_postgres" and "gate_kratos_public"/ ],
    [ 'gate_api introspect with gate_auth',
      conf_with("$redis gate_postgres \"host=/tmp\";", 'gate_auth secret_key; gate_api introspect;'),
      qr/authenticate the OAuth client themselves/ ],
    [ 'gate_api tokens without gate_auth',
      conf_with("$redis gate_postgres \"host=/tmp\";", 'gate_api tokens;'), qr/requires "gate_auth secret_key"/ ],
    [ 'gate_api settings without a secret key',
      conf_with("$redis gate_postgres \"host=/tmp\";", 'gate_auth token; gate_api settings;'),
      qr/"gate_api settings" requires "gate_auth secret_key"/ ],
    [ 'gate_api settings without gate_postgres',
      conf_with($redis, 'gate_auth secret_key; gate_api settings;'),
      qr/"gate_api settings" requires .*"gate_postgres"/ ],
    [ 'gate_api identities without gate_kratos_admin',
      conf_with("$redis gate_postgres \"host=/tmp\";", 'gate_auth secret_key; gate_api identities;'),
      qr/requires "gate_postgres" and "gate_kratos_admin"/ ],
);

for my $case (@bad) {
    my ($name, $conf, $message) = @$case;
    my ($rc, $out) = $t->nginx_test_config($conf);
    isnt $rc, 0, "$name fails nginx -t";
    like $out, $message, "$name names the bad value";
}

# A secret never reaches the log, even when the line is wrong.
($rc, $out) = $t->nginx_test_config(conf_with('gate_redis 127.0.0.1:6379 password= ;'));
isnt $rc, 0, 'an empty redis password fails nginx -t';

($rc, $out) = $t->nginx_test_config(
    conf_with('gate_redis 127.0.0.1:6379 password=s3cret-value timeout=x;'));
isnt $rc, 0, 'a bad parameter next to a password fails';
unlike $out, qr/s3cret-value/, 'the password is not echoed in the error';

($rc, $out) = $t->nginx_test_config(
    conf_with('gate_postgres "host=/tmp password=pg-s3cret dbname" pool=2;'));
isnt $rc, 0, 'a broken conninfo with a password fails';
unlike $out, qr/pg-s3cret/, 'the PostgreSQL password is not echoed in the error';

# The example configuration answers nginx's own refusals in Gate's shape.
# Nothing behind it runs here (no Redis, PostgreSQL or Kratos): these
# answers need none of them.
$t->allow_log(qr/gate (redis|postgres)|connect\(\) failed|Connection refused|no live upstreams/);
$t->start_nginx(conf => example_conf());
for my $case (
    [ 'an unknown route', GET => '/no/such/route', undef, 404, 'not_found' ],
    [ 'an internal location from outside', GET => '/_gate/kratos-admin/admin/identities', undef, 404, 'not_found' ],
    [ 'TRACE', TRACE => '/v1/gate/identities', undef, 405, 'method_not_allowed' ],
    [ 'a URI of 9000 bytes', GET => '/' . ('a' x 9000), undef, 414, 'uri_too_long' ],
    [ 'a body over client_max_body_size', POST => '/v1/gate/identities', 'x' x (1024 * 1024 + 1), 413, 'body_too_large' ],
    [ 'a header over the buffers', GET => '/v1/gate/identities', undef, 400, 'bad_request', [ 'X-Big' => 'b' x 40000 ] ],
    [ 'Kratos not answering a proxied route', GET => '/health/ready', undef, 503, 'unavailable' ],
) {
    my ($name, $method, $path, $body, $status, $code, $headers) = @$case;
    my $r = $t->request($method, $path, (defined $body ? (body => $body) : ()),
                        headers => [ 'Content-Type' => 'application/json', @{ $headers // [] } ]);
    is $r->{status}, $status, "$name: $status";
    like $r->{headers}{'content-type'} // '', qr{^application/json}, '... as JSON';
    is $r->{json}{error}{code}, $code, "... $code";
}
my $garbage = $t->request(GET => '/', raw => "NOT A REQUEST LINE\r\n\r\n");
is $garbage->{status}, 400, 'a request line nginx cannot read: 400';
is $garbage->{json}{error}{code}, 'bad_request', '... bad_request, as JSON';

$t->finish;
done_testing;
