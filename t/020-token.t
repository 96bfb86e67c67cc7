# gate_auth token: bearer tokens checked against Redis (and the shared
# cache), scopes, the tenant header, variables, and what the upstream sees.

use strict;
use warnings;

use Test::More;
use Gate::Test;
use Gate::Store;
use Gate::Token qw(new_secret with_checksum store_token sha256_hex);

my $t = Gate::Test->new;
$t->start_redis(name => 'r1');
my $app = $t->start_upstream('APP');
my $pg = Gate::Store->new($t);

# tenants are resolved (gate_tenant header) from PostgreSQL
my ($tenant) = $pg->gatectl(qw(tenant create --slug acme --name Acme))->{out} =~ /^(\S+)/;
my ($other) = $pg->gatectl(qw(tenant create --slug globex --name Globex))->{out} =~ /^(\S+)/;

(my $conf = <<'EOF') =~ s/%%CONNINFO%%/$pg->conninfo/e;
%%GLOBALS%%
http {
    %%HTTP_GLOBALS%%
    log_format gate '$status $gate_decision "$gate_deny_reason" '
                    '"$gate_tenant_id" "$gate_subject" "$gate_token_id"';
    access_log %%TESTDIR%%/gate.log gate;

    gate_redis 127.0.0.1:%%REDIS_PORT_r1%% timeout=500ms;
    gate_postgres "%%CONNINFO%%";
    gate_cache zone=gate:1m ttl=30s negative_ttl=1s;

    server {
        listen 127.0.0.1:%%PORT_HTTP%%;

        location /api/ {
            gate_auth token;
            proxy_set_header X-Seen-Token-Id $gate_token_id;
            proxy_set_header X-Seen-Scopes $gate_scopes;
            proxy_pass http://127.0.0.1:%%PORT_APP%%;
        }

        location /write/ {
            gate_auth token;
            gate_scope read write;
            proxy_pass http://127.0.0.1:%%PORT_APP%%;
        }

        location /tenant/ {
            gate_auth token;
            gate_tenant header X-Gate-Tenant;
            proxy_pass http://127.0.0.1:%%PORT_APP%%;
        }

        location /open/ {
            proxy_pass http://127.0.0.1:%%PORT_APP%%;
        }
    }
}
EOF
$t->start_nginx(conf => $conf);

my ($token, $hash, $id) = store_token($t, 'r1', tenant => $tenant, sub => 'user-1',
                                      scope => 'read profile');

sub bearer { return (headers => [ Authorization => "Bearer $_[0]", @_[1 .. $#_] ]) }

sub hmget_calls {
    my $info = $t->redis(r1 => 'INFO', 'commandstats');
    return $info =~ /cmdstat_hmget:calls=(\d+)/ ? $1 : 0;
}

subtest 'a valid token reaches the upstream with Gate\'s headers only' => sub {
    my $r = $t->request(GET => '/api/orders', bearer($token,
        'X-Gate-Tenant-Id' => $other, 'X-Gate-Subject' => 'admin',
        'x-gate-scopes' => 'everything', 'X-Gate-Whatever' => 'forged'));
    is $r->{status}, 200, 'allowed';
    my $h = $r->{json}{headers};
    is $h->{'x-gate-tenant-id'}, $tenant, 'upstream sees the token\'s tenant';
    is $h->{'x-gate-subject'}, 'user-1', 'upstream sees the subject';
    is $h->{'x-gate-scopes'}, 'read profile', 'upstream sees the scopes';
    ok !exists $h->{'x-gate-whatever'}, 'a client X-Gate-* header never reaches the upstream';
    is $h->{'x-seen-token-id'}, $id, '$gate_token_id holds the token id';
    is $h->{'x-seen-scopes'}, 'read profile', '$gate_scopes holds the scopes';
};

subtest 'client X-Gate-* headers are stripped on locations without gate directives too' => sub {
    my $r = $t->request(GET => '/open/x', headers => [ 'X-Gate-Tenant-Id' => $other,
                                                       'X-Gate-Subject' => 'admin',
                                                       'X-Other' => 'kept' ]);
    is $r->{status}, 200, 'no gate directive: proxied';
    ok !exists $r->{json}{headers}{'x-gate-tenant-id'}, 'X-Gate-Tenant-Id removed';
    ok !exists $r->{json}{headers}{'x-gate-subject'}, 'X-Gate-Subject removed';
    is $r->{json}{headers}{'x-other'}, 'kept', 'other headers untouched';
};

subtest 'a missing Authorization header' => sub {
    my $r = $t->request(GET => '/api/orders');
    is $r->{status}, 401, 'status 401';
    is $r->{headers}{'www-authenticate'}, 'Bearer', 'WWW-Authenticate: Bearer, no error code';
    is $r->{json}{error}{code}, 'invalid_token', 'JSON error code';
    like $r->{json}{error}{message}, qr/required/i, 'JSON error message says a token is required';
    like $r->{headers}{'content-type'}, qr{^application/json}, 'JSON content type';
};

my $valid_body = substr($token, length 'gat_live_', 56);
my @malformed = (
    [ 'wrong prefix',            'Bearer ' . with_checksum('gat_test_' . $valid_body) ],
    [ 'secret key prefix',       'Bearer ' . with_checksum('gate_live_sk_' . $valid_body) ],
    [ 'bad checksum',            'Bearer ' . substr($token, 0, -8) . 'deadbeef' ],
    [ 'uppercase hex',           'Bearer ' . with_checksum('gat_live_' . uc $valid_body) ],
    [ '63 hex digits',           'Bearer ' . with_checksum('gat_live_' . substr($valid_body, 1)) ],
    [ '65 hex digits',           'Bearer ' . with_checksum('gat_live_' . $valid_body . 'a') ],
    [ 'non-hex character',       'Bearer ' . with_checksum('gat_live_' . substr($valid_body, 1) . 'g') ],
    [ 'Bearer without token',    'Bearer' ],
    [ 'Bearer and spaces',       'Bearer    ' ],
    [ 'Basic scheme',            'Basic dXNlcjpwYXNz' ],
    [ 'token without scheme',    $token ],
    [ '8 KB header',             'Bearer gat_live_' . ('a' x 8000) ],
    [ 'injection-shaped',        "Bearer gat_live_' OR 1=1 --" ],
);

my $calls = hmget_calls();
for my $case (@malformed) {
    my ($name, $value) = @$case;
    my $r = $t->request(GET => '/api/orders', headers => [ Authorization => $value ]);
    is $r->{status}, 401, "$name: status 401";
    is $r->{headers}{'www-authenticate'}, 'Bearer error="invalid_token"', "$name: RFC 6750 challenge";
    is $r->{json}{error}{code}, 'invalid_token', "$name: JSON error";
}

my $r = $t->request(GET => '/api/orders',
                    headers => [ Authorization => "Bearer $token", Authorization => "Bearer $token" ]);
# nginx itself refuses a duplicated Authorization header while reading the
# request (ngx_http_process_unique_header_line), before any module runs.
is $r->{status}, 400, 'two Authorization headers: nginx refuses the request (400)';

is hmget_calls(), $calls, 'no malformed credential caused a Redis lookup';

subtest 'a well-formed unknown token' => sub {
    my $before = hmget_calls();
    my $r = $t->request(GET => '/api/orders', bearer(new_secret('gat_live_')));
    is $r->{status}, 401, 'status 401';
    is $r->{headers}{'www-authenticate'}, 'Bearer error="invalid_token"', 'challenge';
    is hmget_calls(), $before + 1, 'exactly one Redis lookup';
};

subtest 'an expired token' => sub {
    my $expired = store_token($t, 'r1', tenant => $tenant, sub => 'user-1', scope => 'read',
                              exp => time - 5);
    my $r = $t->request(GET => '/api/orders', bearer($expired));
    is $r->{status}, 401, '401 although Redis still holds the record';
    is $r->{json}{error}{code}, 'invalid_token', 'invalid_token';
};

subtest 'a token that expires while cached is refused' => sub {
    my $soon = store_token($t, 'r1', tenant => $tenant, sub => 'user-1', scope => 'read',
                           exp => time + 2);
    is $t->request(GET => '/api/x', bearer($soon))->{status}, 200, 'valid now (and cached)';
    sleep 3;
    is $t->request(GET => '/api/x', bearer($soon))->{status}, 401, 'refused after exp';
};

subtest 'scopes' => sub {
    my $r = $t->request(GET => '/write/doc', bearer($token));
    is $r->{status}, 403, 'missing "write": 403';
    is $r->{headers}{'www-authenticate'}, 'Bearer error="insufficient_scope", scope="read write"',
        'challenge names the scopes required';
    is $r->{json}{error}{code}, 'insufficient_scope', 'JSON error';

    my $writer = store_token($t, 'r1', tenant => $tenant, sub => 'user-2', scope => 'write admin read');
    is $t->request(GET => '/write/doc', bearer($writer))->{status}, 200,
        'all required scopes, in any order: allowed';

    my $prefix = store_token($t, 'r1', tenant => $tenant, sub => 'user-3', scope => 'reader writer');
    is $t->request(GET => '/write/doc', bearer($prefix))->{status}, 403,
        'scopes match whole words only';
};

subtest 'gate_tenant header' => sub {
    my $r = $t->request(GET => '/tenant/x', bearer($token, 'X-Gate-Tenant' => $tenant));
    is $r->{status}, 200, 'the token\'s own tenant: allowed';
    is $t->request(GET => '/tenant/x', bearer($token, 'X-Gate-Tenant' => 'acme'))->{status}, 200,
        'the tenant named by its slug: allowed';
    is $t->request(GET => '/tenant/x', bearer($token, 'X-Gate-Tenant' => 'nosuch'))->{status}, 404,
        'an unknown tenant: 404';
    ok !exists $r->{json}{headers}{'x-gate-tenant'}, 'the asking header is not passed on';

    my $unknown = $t->request(GET => '/tenant/x', bearer(new_secret('gat_live_'), 'X-Gate-Tenant' => $tenant));
    $r = $t->request(GET => '/tenant/x', bearer($token, 'X-Gate-Tenant' => $other));
    is $r->{status}, 401, 'another tenant: 401';
    is $r->{body}, $unknown->{body}, '... with the very body an unknown token gets';
    is $r->{headers}{'www-authenticate'}, $unknown->{headers}{'www-authenticate'}, '... and the same challenge';

    $r = $t->request(GET => '/tenant/x', bearer($token));
    is $r->{status}, 400, 'no tenant header: 400';
    is $r->{json}{error}{code}, 'tenant_required', 'tenant_required';
};

subtest 'the shared cache answers, and gate:invalidate empties it' => sub {
    my ($cached, $h) = store_token($t, 'r1', tenant => $tenant, sub => 'user-4', scope => 'read');
    is $t->request(GET => '/api/x', bearer($cached))->{status}, 200, 'first use looks it up';
    my $before = hmget_calls();
    is $t->request(GET => '/api/x', bearer($cached))->{status}, 200, 'second use';
    is $t->request(GET => '/api/x', bearer($cached))->{status}, 200, 'third use';
    is hmget_calls(), $before, 'repeated uses are served from the cache';

    $t->redis(r1 => 'DEL', "gate:tok:$h");
    is $t->request(GET => '/api/x', bearer($cached))->{status}, 200,
        'deleting the Redis record alone leaves the cached entry';
    $t->redis(r1 => 'PUBLISH', 'gate:invalidate', $h);
    ok $t->wait_for(sub { $t->request(GET => '/api/x', bearer($cached))->{status} == 401 }, timeout => 1),
        'after a message on gate:invalidate it is refused';
};

subtest 'tenant-wide invalidation' => sub {
    my ($a1, $h1) = store_token($t, 'r1', tenant => $other, sub => 'a', scope => 'read');
    my ($a2, $h2) = store_token($t, 'r1', tenant => $other, sub => 'b', scope => 'read');
    is $t->request(GET => '/api/x', bearer($_))->{status}, 200, 'cached' for $a1, $a2;
    $t->redis(r1 => 'DEL', "gate:tok:$h1", "gate:tok:$h2");
    $t->redis(r1 => 'PUBLISH', 'gate:invalidate', "tenant:$other");
    ok $t->wait_for(sub { $t->request(GET => '/api/x', bearer($a1))->{status} == 401
                          && $t->request(GET => '/api/x', bearer($a2))->{status} == 401 }, timeout => 1),
        'every token of the tenant is dropped';
    is $t->request(GET => '/api/x', bearer($token))->{status}, 200, 'another tenant\'s token is untouched';
};

subtest 'variables in the access log' => sub {
    $t->request(GET => '/api/x', bearer($token));
    $t->request(GET => '/write/x', bearer($token));
    $t->request(GET => '/api/x');
    my $log = do { local (@ARGV, $/) = ($t->dir . '/n1/gate.log'); <> } // '';
    like $log, qr/^200 allow "-" "\Q$tenant\E" "user-1" "\Q$id\E"$/m, 'allowed: decision and identity';
    like $log, qr/^403 deny "insufficient_scope" "-" "-" "-"$/m, 'scope denial: reason, no identity';
    like $log, qr/^401 deny "missing_credential"/m, 'missing token: reason';
};

$t->finish;
$pg->finish;
done_testing;
