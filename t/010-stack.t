# The real stack: nginx with the module in front of the suite's Kratos and
# PostgreSQL.  Kratos' public API answers through nginx, its admin API never
# does, and Gate's migrations can be applied again without harm.

use strict;
use warnings;

use Test::More;
use Gate::Test;

plan skip_all => 'needs the suite services: run through scripts/test'
    unless $ENV{GATE_TEST_KRATOS_PUBLIC_PORT} && $ENV{GATE_TEST_PG_DIR};

my $t = Gate::Test->new;
$t->start_redis(name => 'r1');

$t->nginx_conf(<<'EOF');
%%GLOBALS%%
http {
    %%HTTP_GLOBALS%%
    gate_redis 127.0.0.1:%%REDIS_PORT_r1%%;

    upstream kratos_public {
        server 127.0.0.1:%%ENV_GATE_TEST_KRATOS_PUBLIC_PORT%%;
        keepalive 4;
    }

    server {
        listen 127.0.0.1:%%PORT_HTTP%%;
        default_type application/json;

        location /admin {
            return 404 '{"error":{"code":"not_found","message":"Not found."}}';
        }

        location /identities {
            return 404 '{"error":{"code":"not_found","message":"Not found."}}';
        }

        location = /health/ready {
            proxy_pass http://kratos_public;
        }

        location /self-service/ {
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_pass http://kratos_public;
        }
    }
}
EOF
$t->start_nginx;

my $r = $t->request(GET => '/health/ready');
is $r->{status}, 200, 'Kratos /health/ready answers 200 through nginx';
is $r->{json}{status}, 'ok', '... from Kratos itself';

$r = $t->request(GET => '/self-service/registration/api',
                 headers => [ Accept => 'application/json' ]);
is $r->{status}, 200, 'an API registration flow is created through nginx';
like $r->{json}{id} // '', qr/^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$/,
    '... with a UUIDv4 flow id';
is $r->{json}{type}, 'api', '... of type api';
ok((grep { ($_->{attributes}{name} // '') eq 'traits.email' } @{ $r->{json}{ui}{nodes} // [] }),
   '... whose form asks for the user schema\'s email trait');

for my $path ('/admin/identities', '/admin/health/ready', '/identities',
              '/identities/00000000-0000-4000-8000-000000000000') {
    $r = $t->request(GET => $path);
    is $r->{status}, 404, "$path is refused on the public route";
    is $r->{json}{error}{code}, 'not_found', "... with Gate's JSON error";
    unlike $r->{headers}{location} // '', qr/:\Q$ENV{GATE_TEST_KRATOS_ADMIN_PORT}\E/,
        '... and no redirect revealing the admin API';
}

# --- migrations --------------------------------------------------------------

my @psql = ('psql', '-X', '-q', '-v', 'ON_ERROR_STOP=1', '-h', $ENV{GATE_TEST_PG_DIR},
            '-p', $ENV{GATE_TEST_PG_PORT}, '-U', 'postgres');
my $db = "gate_migrate_$$";

system(@psql, '-d', 'postgres', '-c', "CREATE DATABASE $db") == 0
    or BAIL_OUT('cannot create a scratch database');

sub migrate {
    my $ok = 1;
    for my $f (sort glob($t->root . '/conf/sql/*.sql')) {
        local $ENV{PGOPTIONS} = '-c client_min_messages=warning';
        $ok &&= system(@psql, '-d', $db, '-f', $f) == 0;
    }
    return $ok;
}

sub schema {
    my $out = `pg_dump --schema-only -h $ENV{GATE_TEST_PG_DIR} -p $ENV{GATE_TEST_PG_PORT} -U postgres $db`;
    # pg_dump brackets its output with a random one-time key
    $out =~ s/^\\(?:un)?restrict .*\n//mg;
    return $out;
}

ok migrate(), 'migrations apply to an empty database';
my $first = schema();
like $first, qr/CREATE TABLE public\.$_ /, "table $_ exists"
    for qw(tenants api_keys access_tokens identities tenant_settings);

ok migrate(), 'migrations apply a second time without error';
is schema(), $first, '... and leave the schema exactly as it was';

system(@psql, '-d', 'postgres', '-c', "DROP DATABASE $db");

$t->finish;
done_testing;
