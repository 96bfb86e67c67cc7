# gate_tenant host: the tenant is the subdomain left of a suffix, as in
# acme.auth.example.test; the same flows and checks as by header.

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
$t->start_nginx(conf => front_conf(conninfo => $pg->conninfo, tenant => 'host .auth.example.test'));

for my $slug (qw(acme globex)) {
    $pg->gatectl('tenant', 'create', '--slug', $slug, '--name', $slug);
}
$pg->gatectl(qw(tenant create --slug initech --name Initech));
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

$t->finish;
$pg->finish;
done_testing;
