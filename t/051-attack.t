# An attacker holding tenant A's flow ids, sessions and tenant name walks
# every public route through tenant B (and with forged headers): nothing of
# A answers through B.

use strict;
use warnings;

use Test::More;
use Gate::Test;
use Gate::Store;
use Gate::Flows qw(front_conf);

plan skip_all => 'needs the suite services: run through scripts/test'
    unless $ENV{GATE_TEST_KRATOS_ADMIN_PORT} && $ENV{GATE_TEST_HOOK_PORT};

my $t = Gate::Test->new;
$t->start_redis(name => 'r1');
$t->start_upstream('APP');
my $pg = Gate::Store->new($t);
$t->start_nginx(conf => front_conf(conninfo => $pg->conninfo));

my %tenant;
for my $slug (qw(acme globex)) {
    ($tenant{$slug}) = $pg->gatectl('tenant', 'create', '--slug', $slug, '--name', $slug)->{out} =~ /^(\S+)/;
}
my $run = $$ . int(rand 1e6);

sub req {
    my ($tenant, $method, $path, @headers) = @_;
    my $json = ref $headers[-1] eq 'HASH' ? pop @headers : undef;
    return $t->request($method, $path,
        headers => [ ($tenant ? ('X-Gate-Tenant' => $tenant) : ()), Accept => 'application/json', @headers ],
        ($json ? (json => $json) : ()));
}

sub session_for {
    my ($tenant, $email) = @_;
    my $flow = req($tenant, GET => '/self-service/registration/api');
    my $r = req($tenant, POST => "/self-service/registration?flow=$flow->{json}{id}",
                { method => 'password', traits => { email => $email }, password => "Seven lucky horses $run" });
    return ($r->{json}{session_token}, $r->{json}{identity}{id});
}

# A fresh worker (far slower under valgrind) answers 503 until its
# PostgreSQL and Redis connections are up: wait for them before the walk.
ok $t->wait_for(sub { req('acme', GET => '/self-service/registration/api')->{status} == 200 },
                timeout => 30),
    'the front creates flows once its connections are up';

my ($a_token, $a_id) = session_for('acme', "alice-$run\@acme.test");
my ($b_token, $b_id) = session_for('globex', "bob-$run\@globex.test");
ok $a_token && $b_token, 'a user in each tenant, each with a session';

my %a_flow;
for my $kind (qw(login registration recovery verification)) {
    $a_flow{$kind} = req('acme', GET => "/self-service/$kind/api")->{json}{id};
}
$a_flow{settings} = req('acme', GET => '/self-service/settings/api', 'X-Session-Token' => $a_token)->{json}{id};
ok 5 == grep({ defined } values %a_flow), 'A has a flow of every kind';

subtest 'A\'s flows through B' => sub {
    for my $kind (qw(login registration recovery verification)) {
        my $id = $a_flow{$kind};
        my $r = req('globex', GET => "/self-service/$kind/flows?id=$id");
        is $r->{status}, 404, "fetch $kind flow: 404";
        unlike $r->{body}, qr/\Q$id\E/, "... and the body never echoes it";
        $r = req('globex', POST => "/self-service/$kind?flow=$id", { method => 'password' });
        is $r->{status}, 404, "submit $kind flow: 404";
        $r = req('globex', GET => "/self-service/$kind?flow=$id");
        is $r->{status}, 404, "GET-submit $kind flow: 404";
    }
    for my $method (qw(GET POST)) {
        my $r = req('globex', $method => "/self-service/settings/flows?id=$a_flow{settings}",
                    'X-Session-Token' => $a_token);
        is $r->{status}, 401, "settings flow with A's session through B ($method): 401";
    }
    for my $method (qw(GET POST)) {
        my $path = $method eq 'GET' ? "/self-service/settings/flows?id=$a_flow{settings}"
                                    : "/self-service/settings?flow=$a_flow{settings}";
        my $r = req('globex', $method => $path, 'X-Session-Token' => $b_token,
                    ($method eq 'POST' ? ({ method => 'password', password => "Taken over $run" }) : ()));
        is $r->{status}, 404, "A's settings flow with B's own session ($method): 404";
        is $r->{json}{error}{code}, 'not_found', '... Gate\'s not_found, as for an unknown flow';
        unlike $r->{body}, qr/alice-/, '... without A\'s traits';
    }
};

subtest 'two tenant headers name no tenant' => sub {
    for my $pair ([qw(acme globex)], [qw(globex acme)], [qw(acme acme)]) {
        my $r = req($pair->[0], GET => "/self-service/login/flows?id=$a_flow{login}", 'X-Gate-Tenant' => $pair->[1]);
        is $r->{status}, 400, "X-Gate-Tenant: $pair->[0], then $pair->[1]: 400";
        is $r->{json}{error}{code}, 'invalid_request', '... invalid_request';
    }
};

subtest 'A\'s session through B, however it is presented' => sub {
    for my $presented ([ 'X-Session-Token' => $a_token ], [ Authorization => "Bearer $a_token" ],
                       [ Cookie => "ory_kratos_session=$a_token" ]) {
        for my $path ('/sessions/whoami', '/app/data') {
            my $r = req('globex', GET => $path, @$presented);
            ok $r->{status} == 401, "$path with $presented->[0]: 401";
            unlike $r->{body}, qr/\Q$a_id\E/, '... nothing of A in the answer';
        }
    }
};

subtest 'forged headers change nothing' => sub {
    my $r = req('globex', GET => '/app/data', 'X-Session-Token' => $a_token,
                'X-Gate-Tenant-Id' => $tenant{globex}, 'X-Gate-Subject' => $b_id);
    is $r->{status}, 401, 'forged X-Gate-Tenant-Id and X-Gate-Subject: still 401';

    $r = req('globex', GET => '/app/data', 'X-Session-Token' => $b_token,
             'X-Gate-Subject' => $a_id, 'X-Gate-Tenant-Id' => $tenant{acme});
    is $r->{status}, 200, 'B\'s own session works';
    is $r->{json}{headers}{'x-gate-subject'}, $b_id, '... and the app sees B\'s user, not the forged one';
    is $r->{json}{headers}{'x-gate-tenant-id'}, $tenant{globex}, '... in B';

    # two credentials: Gate reads the one Kratos reads (X-Session-Token first)
    $r = req('globex', GET => '/sessions/whoami', 'X-Session-Token' => $b_token,
             Cookie => "ory_kratos_session=$a_token");
    is $r->{status}, 200, 'B\'s token with A\'s cookie through B: B\'s session';
    is $r->{json}{identity}{id}, $b_id, '... Kratos answers for B\'s user, as Gate checked';
    $r = req('globex', GET => '/sessions/whoami', 'X-Session-Token' => $a_token,
             Cookie => "ory_kratos_session=$b_token");
    is $r->{status}, 401, 'A\'s token with B\'s cookie through B: 401';

    $r = req('acme', GET => '/self-service/login/api');
    my $flow = $r->{json}{id};
    $r = $t->request(GET => "/self-service/login/flows?id=$flow",
                     headers => [ 'X-Gate-Tenant' => 'globex', 'X-Gate-Tenant' => 'acme' ]);
    is $r->{status}, 400, 'two tenant headers: refused, A\'s flow stays A\'s';
};

subtest 'smuggling another flow id past the check' => sub {
    my $b_flow = req('globex', GET => '/self-service/registration/api')->{json}{id};
    my $a_reg = $a_flow{registration};
    for my $query ("flow=$b_flow&id=$a_reg", "id=$b_flow&id=$a_reg", "FLOW=$b_flow&flow=$a_reg",
                   "flow=$b_flow&%66low=$a_reg", "fl%6Fw=$a_reg&flow=$b_flow", "flow=$b_flow;flow=$a_reg",
                   "id=$b_flow&flow=$a_reg") {
        my $r = req('globex', GET => "/self-service/registration/flows?$query");
        is $r->{status}, 404, "fetch ?$query through B: 404";
        unlike $r->{body}, qr/\Q$a_reg\E/, '... A\'s flow never answers';
        $r = req('globex', POST => "/self-service/registration?$query",
                 { method => 'password', traits => { email => "smuggled-$run\@x.test" }, password => "Twelve tall trees $run" });
        isnt $r->{status}, 200, "submit ?$query through B: refused";
    }
};

subtest 'a session cookie Kratos would read differently' => sub {
    my $r = req('globex', GET => '/sessions/whoami',
                Cookie => "ory_kratos_session=$b_token; ory_kratos_session=$a_token");
    is $r->{status}, 401, 'two session cookies: refused';
    $r = req('globex', GET => '/sessions/whoami', Cookie => "ORY_KRATOS_SESSION=$b_token; ory_kratos_session=$a_token");
    is $r->{status}, 401, 'B\'s cookie in other case plus A\'s: the exact-case one (A\'s) is checked, refused';
    $r = req('acme', GET => '/sessions/whoami', Cookie => "ORY_KRATOS_SESSION=$b_token; ory_kratos_session=$a_token");
    unlike $r->{body}, qr/\Q$b_id\E/, 'through A: never B\'s identity';
};

subtest 'routes that are never exposed' => sub {
    for my $path ('/admin/identities', "/admin/identities/$a_id", '/identities', "/identities/$a_id",
                  '/admin/sessions', '/sessions', '/self-service/errors?id=x', '/schemas',
                  '/admin/courier/messages', '/health/../admin/identities') {
        my $r = req('globex', GET => $path);
        is $r->{status}, 404, "$path: 404";
        unlike $r->{body}, qr/\Q$a_id\E|alice-/, '... and nothing of A';
    }
};

subtest 'tenant names that are not tenants' => sub {
    for my $name ($tenant{acme} . 'x', 'acme.globex', '*', '%', "acme\tx") {
        my $r = req($name, GET => '/self-service/login/api');
        ok $r->{status} == 404 || $r->{status} == 400, "tenant \"$name\": refused";
    }
};

subtest 'known limit: one Kratos, one namespace of emails' => sub {
    # An email registered in A cannot register in B (Kratos keeps
    # identifiers unique per database); Gate says so in the README. The
    # answer is Kratos' own "exists already", with no identity data of A.
    my $flow = req('globex', GET => '/self-service/registration/api');
    my $r = req('globex', POST => "/self-service/registration?flow=$flow->{json}{id}",
                { method => 'password', traits => { email => "alice-$run\@acme.test" }, password => "x$run y$run z" });
    is $r->{status}, 400, 'refused';
    unlike $r->{body}, qr/\Q$a_id\E/, '... without A\'s identity id';
};

$t->finish;
$pg->finish;
done_testing;
