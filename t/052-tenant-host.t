# gate_tenant host: the tenant is the subdomain left of a suffix, as in
# acme.auth.example.test; the same flows and checks as by header.

use strict;
use warnings;

use Test::More;
use Gate::Test;
use Gate::Store;
use Gate::Flows qw(front_conf);
use Gate::Kratos;

plan skip_all => 'needs the suite services: run through scripts/test'
    unless $ENV{GATE_TEST_KRATOS_ADMIN_PORT} && $ENV{GATE_TEST_HOOK_PORT};

my $t = Gate::Test->new;
$t->start_redis(name => 'r1');
$t->start_upstream('APP');
my $pg = Gate::Store->new($t);
$t->start_nginx(conf => front_conf(conninfo => $pg->conninfo, tenant => 'host .auth.example.test'));

for my $slug (qw(acme globex)) {
    $pg->gatectl('tenant', 'create', '--slug', $slug, '--name', $slug);
}
$pg->gatectl(qw(tenant create --slug initech --name Initech));
$pg->gatectl(qw(tenant create --slug hooli --name Hooli));    # never asked for before the outage
$pg->gatectl(qw(tenant disable initech));

sub at {
    my ($host, $method, $path, %opt) = @_;
    return $t->request($method, $path, headers => [ Host => $host, Accept => 'application/json' ],
                       (exists $opt{json} ? (json => $opt{json}) : ()));
}

my $r = at('acme.auth.example.test', GET => '/self-service/login/api');
is $r->{status}, 200, 'acme.auth.example.test: a flow of acme';
my $flow = $r->{json}{id};

is at('ACME.Auth.Example.Test', GET => "/self-service/login/flows?id=$flow")->{status}, 200,
    'host names are case-insensitive';
is at('acme.auth.example.test:8080', GET => "/self-service/login/flows?id=$flow")->{status}, 200,
    'a port in the Host header does not matter';

$r = at('globex.auth.example.test', GET => "/self-service/login/flows?id=$flow");
is $r->{status}, 404, 'the same flow through globex\'s host: 404';
is $r->{json}{error}{code}, 'not_found', 'not_found';

$r = at('nosuch.auth.example.test', GET => '/self-service/login/api');
is $r->{status}, 404, 'an unknown subdomain: 404';
is $r->{json}{error}{code}, 'tenant_not_found', 'tenant_not_found';

$r = at('initech.auth.example.test', GET => '/self-service/login/api');
is $r->{status}, 403, 'a disabled tenant\'s subdomain: 403';
is $r->{json}{error}{code}, 'tenant_disabled', 'tenant_disabled';

for my $host ('auth.example.test', 'acme.example.test', 'evil.com', 'a.b.auth.example.test') {
    $r = at($host, GET => '/self-service/login/api');
    ok $r->{status} == 400 || $r->{status} == 404, "$host: refused ($r->{status})";
}

subtest 'Kratos or PostgreSQL down: 503 within the timeout' => sub {
    my $k = Gate::Kratos->start($t, name => 'k1');
    (my $conf = front_conf(conninfo => $pg->conninfo, tenant => 'host .auth.example.test',
                           public_port => $k->public_port, admin_port => $k->admin_port))
        =~ s/\n\s*listen 127\.0\.0\.1:%%ENV_GATE_TEST_HOOK_PORT%%;//;
    $t->start_nginx(name => 'n2', conf => $conf);
    my @acme = (node => 'n2', headers => [ Host => 'acme.auth.example.test', Accept => 'application/json' ]);

    is $t->request(GET => '/self-service/login/api', @acme)->{status}, 200, 'with its own Kratos: a flow';
    $k->stop;
    my $r = $t->request(GET => '/self-service/login/api', @acme);
    is $r->{status}, 503, 'Kratos stopped: flow creation 503';
    is $r->{json}{error}{code}, 'unavailable', 'unavailable';
    cmp_ok $r->{elapsed}, '<', 3, 'promptly';
    $r = $t->request(GET => '/sessions/whoami', node => 'n2',
                     headers => [ Host => 'acme.auth.example.test', 'X-Session-Token' => 'ory_st_' . ('a' x 32) ]);
    is $r->{status}, 503, 'Kratos stopped: a session check 503';

    # a tenant never seen before needs PostgreSQL; make it unreachable
    $pg->sql('ALTER DATABASE ' . $pg->db . ' CONNECTION LIMIT 0');
    $pg->sql('SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid()');
    $r = $t->request(GET => '/self-service/login/api', node => 'n2',
                     headers => [ Host => 'hooli.auth.example.test' ]);
    is $r->{status}, 503, 'PostgreSQL unreachable: resolving a new tenant 503';
    like $r->{json}{error}{message}, qr/tenant store/, '... because of the tenant store';
    cmp_ok $r->{elapsed}, '<', 3, 'promptly';
    $pg->sql('ALTER DATABASE ' . $pg->db . ' CONNECTION LIMIT -1');
};

$t->allow_log(qr/gate postgres|gate redis/);
$t->finish;
$pg->finish;
done_testing;
