# The access-token lifecycle: minted with a secret key or in exchange for a
# Kratos session, introspected (RFC 7662), revoked (RFC 7009) and listed,
# and a revocation holds on every node at once.

use strict;
use warnings;

use Test::More;
use Time::HiRes qw(time sleep);
use MIME::Base64 qw(encode_base64);
use Gate::Test;
use Gate::Store;
use Gate::Flows qw(front_conf);
use Gate::Token qw(new_secret);

plan skip_all => 'needs the suite services: run through scripts/test'
    unless $ENV{GATE_TEST_KRATOS_ADMIN_PORT} && $ENV{GATE_TEST_HOOK_PORT};

my $t = Gate::Test->new;
$t->start_redis(name => 'r1');
$t->start_upstream('APP');
my $pg = Gate::Store->new($t);

my $extra = <<'EOF';
        location /v1/gate/identities {
            gate_auth secret_key;
            gate_api identities;
        }

        location = /v1/gate/tokens {
            gate_tenant header X-Gate-Tenant;
            gate_auth secret_key session;
            gate_api tokens;
        }

        location = /v1/gate/tokens/introspect {
            gate_api introspect;
        }

        location = /v1/gate/tokens/revoke {
            gate_api revoke;
        }

        location /api/ {
            gate_auth token;
            proxy_pass http://127.0.0.1:%%PORT_APP%%;
        }
EOF
my $conf = front_conf(conninfo => $pg->conninfo, extra => $extra);
$t->start_nginx(name => 'n1', conf => $conf);
(my $conf2 = $conf) =~ s/\n\s*listen 127\.0\.0\.1:%%ENV_GATE_TEST_HOOK_PORT%%;//;
$t->start_nginx(name => 'n2', conf => $conf2);

my (%tenant, %key);
for my $slug (qw(acme globex)) {
    ($tenant{$slug}) = $pg->gatectl('tenant', 'create', '--slug', $slug, '--name', $slug)->{out} =~ /^(\S+)/;
    ($key{$slug}) = $pg->gatectl('key', 'create', $slug, '--quiet')->{out} =~ /^(\S+)/;
}
$pg->sql(q{INSERT INTO tenant_settings (tenant_id, settings) VALUES
           (:'id', '{"allowed_scopes":["read","write","profile"],"default_scopes":"profile","token_max_ttl":7200}')},
         id => $tenant{acme});
my $run = $$ . int(rand 1e6);

sub api {
    my ($slug, $method, $path, %opt) = @_;
    return $t->request($method, $path, node => $opt{node} // 'n1',
        headers => [ ($slug ? (Authorization => "Bearer $key{$slug}") : ()), @{ $opt{headers} // [] } ],
        (exists $opt{json} ? (json => $opt{json}) : ()), (exists $opt{body} ? (body => $opt{body}) : ()));
}

sub identity {
    my ($slug, $email) = @_;
    return api($slug, POST => '/v1/gate/identities', json => { traits => { email => $email } })->{json}{id};
}

sub mint {
    my ($slug, %body) = @_;
    return api($slug, POST => '/v1/gate/tokens', json => \%body);
}

sub form {
    my ($path, $body, @headers) = @_;
    return $t->request(POST => $path, body => $body,
                       headers => [ 'Content-Type' => 'application/x-www-form-urlencoded', @headers ]);
}

sub introspect {
    my ($slug, $token) = @_;
    return form('/v1/gate/tokens/introspect', "token=$token", Authorization => "Bearer $key{$slug}");
}

sub use_token {
    my ($token, $node) = @_;
    return $t->request(GET => '/api/x', node => $node // 'n1',
                       headers => [ Authorization => "Bearer $token" ])->{status};
}

my $ada = identity('acme', "ada-$run\@acme.test");
my $bob = identity('globex', "bob-$run\@globex.test");
ok $ada && $bob, 'an identity in each tenant';

my ($token, $token_id);

subtest 'mint with a secret key' => sub {
    my $r = mint('acme', subject => $ada, scope => 'read write', expires_in => 600);
    is $r->{status}, 201, 'answered 201 Created' or diag $r->{body};
    $token = $r->{json}{access_token};
    $token_id = $r->{json}{token_id};
    like $token, qr/^gat_live_[0-9a-f]{64}$/, 'a gat_live_ token';
    is $r->{json}{token_type}, 'Bearer', 'token_type Bearer';
    is $r->{json}{expires_in}, 600, 'expires_in as asked';
    is $r->{json}{scope}, 'read write', 'scope as asked';
    like $token_id, qr/^[0-9a-f-]{36}$/, 'a token id';
    is $r->{headers}{'cache-control'}, 'no-store', 'Cache-Control: no-store';

    my ($row) = $pg->sql("SELECT token_hash, subject FROM access_tokens WHERE id = :'id'", id => $token_id);
    is $row->[1], $ada, 'stored for the subject';
    unlike $row->[0], qr/\Q$token\E/, 'stored hashed';

    $r = $t->request(GET => '/api/orders', headers => [ Authorization => "Bearer $token" ]);
    is $r->{status}, 200, 'the token opens a gate_auth token location';
    is $r->{json}{headers}{'x-gate-subject'}, $ada, '... as its subject';
    is $r->{json}{headers}{'x-gate-tenant-id'}, $tenant{acme}, '... in its tenant';
};

subtest 'scopes come back as RFC 6749 writes them' => sub {
    my $r = mint('acme', subject => $ada, scope => '  read   write read ', expires_in => 60);
    is $r->{status}, 201, 'extra spaces and a repeated scope are no error' or diag $r->{body};
    is $r->{json}{scope}, 'read write', '... one space between scopes, each once';
    is introspect('acme', $r->{json}{access_token})->{json}{scope}, 'read write', '... and stored so';
};

subtest 'mint: what is refused' => sub {
    my @cases = (
        [ 'another tenant\'s subject', [ subject => $bob ], 404, 'not_found' ],
        [ 'an unknown subject', [ subject => '00000000-0000-4000-8000-000000000000' ], 404, 'not_found' ],
        [ 'a malformed subject', [ subject => 'root' ], 404, 'not_found' ],
        [ 'no subject', [ scope => 'read' ], 422, 'subject_required' ],
        [ 'a scope not allowed', [ subject => $ada, scope => 'read admin' ], 422, 'scope_not_allowed' ],
        [ 'an illegal scope character', [ subject => $ada, scope => "re\"ad" ], 422, 'invalid_scope' ],
        [ 'a negative expires_in', [ subject => $ada, expires_in => -5 ], 422, 'invalid_expires_in' ],
        [ 'a huge expires_in', [ subject => $ada, expires_in => 10**12 ], 422, 'invalid_expires_in' ],
        [ 'more than the tenant allows', [ subject => $ada, expires_in => 7201 ], 422, 'invalid_expires_in' ],
        [ 'an unknown field', [ subject => $ada, audience => 'x' ], 422, 'unknown_field' ],
    );
    for my $c (@cases) {
        my ($name, $body, $status, $code) = @$c;
        my $r = mint('acme', @$body);
        is $r->{status}, $status, "$name: $status";
        is $r->{json}{error}{code}, $code, "$name: $code";
        like $r->{json}{error}{message} // '', qr/scope|admin|expires|subject|identity|field/i,
            "$name: says what" if $status == 422;
    }
    like mint('acme', subject => $ada, scope => 'read admin')->{json}{error}{message}, qr/"admin"/,
        'the refused scope is named';
    my $r = api('acme', POST => '/v1/gate/tokens', body => '{"subject":', headers => [ 'Content-Type' => 'application/json' ]);
    is $r->{status}, 400, 'invalid JSON: 400';
    $r = api('acme', POST => '/v1/gate/tokens', body => 'subject=x', headers => [ 'Content-Type' => 'text/plain' ]);
    is $r->{status}, 415, 'wrong content type: 415';
    $r = $t->request(POST => '/v1/gate/tokens', json => { subject => $ada });
    is $r->{status}, 401, 'no credential and no tenant: 401';
    is $r->{json}{error}{code}, 'invalid_key', '... invalid_key';
    is $r->{headers}{'www-authenticate'}, 'Bearer', '... with a Bearer challenge';
    $r = $t->request(POST => '/v1/gate/tokens', json => { subject => $ada },
                     headers => [ 'X-Session-Token' => 'ory_st_abc' ]);
    is $r->{status}, 400, 'a session but no tenant: 400';
    is $r->{json}{error}{code}, 'tenant_required', '... tenant_required';
    $r = $t->request(POST => '/v1/gate/tokens', json => { subject => $ada }, headers => [ 'X-Gate-Tenant' => 'acme' ]);
    is $r->{status}, 401, 'no credential: 401';
    $r = $t->request(POST => '/v1/gate/tokens', json => { subject => $ada },
                     headers => [ Authorization => "Bearer $token" ]);
    is $r->{status}, 401, 'an access token is no credential to mint with: 401';
    is $r->{json}{error}{code}, 'invalid_key', '... invalid_key';
};

subtest 'the token endpoints take POST only, and say so' => sub {
    for my $path ('/v1/gate/tokens', '/v1/gate/tokens/introspect', '/v1/gate/tokens/revoke') {
        my $r = api('acme', GET => $path);
        is $r->{status}, 405, "GET $path: 405";
        is $r->{headers}{allow}, 'POST', '... Allow: POST';
    }
};

subtest 'introspection (RFC 7662)' => sub {
    my $twice = form('/v1/gate/tokens/introspect', "token=$token&token=gat_live_x",
                     Authorization => "Bearer $key{acme}");
    is $twice->{status}, 400, 'token given twice: 400 (RFC 6749 3.1)';
    is $twice->{json}{error}, 'invalid_request', '... invalid_request';

    my $r = introspect('acme', $token);
    is $r->{status}, 200, 'answered 200';
    my $j = $r->{json};
    is_deeply [ sort keys %$j ], [ sort qw(active scope sub exp iat token_type tenant_id jti) ], 'the fields';
    ok $j->{active} && $j->{active} eq '1', 'active: true';
    is $j->{scope}, 'read write', 'scope';
    is $j->{sub}, $ada, 'sub';
    is $j->{jti}, $token_id, 'jti is the token id';
    is $j->{tenant_id}, $tenant{acme}, 'tenant_id';
    is $j->{token_type}, 'Bearer', 'token_type';
    cmp_ok abs($j->{exp} - (time + 600)), '<', 10, 'exp: in ten minutes';
    cmp_ok abs($j->{iat} - time), '<', 10, 'iat: now';

    my $basic = 'Basic ' . encode_base64("acme:$key{acme}", '');
    $r = form('/v1/gate/tokens/introspect', "token=$token&token_type_hint=access_token", Authorization => $basic);
    ok $r->{json}{active}, 'HTTP Basic client authentication (slug:key) works';
    $r = form('/v1/gate/tokens/introspect', "token=$token&client_id=acme&client_secret=$key{acme}");
    ok $r->{json}{active}, 'client_id/client_secret form fields work';
    $r = form('/v1/gate/tokens/introspect', "token=$token&client_id=$tenant{acme}&client_secret=$key{acme}");
    ok $r->{json}{active}, 'client_id may be the tenant id';
    $r = form('/v1/gate/tokens/introspect', "token=$token",
              Authorization => 'Basic ' . encode_base64("ACME:$key{acme}", ''));
    ok $r->{json}{active}, 'the slug in any case, as the tenant header takes it';

    for my $bad ([ 'wrong secret', 'Basic ' . encode_base64('acme:' . new_secret('gate_live_sk_'), '') ],
                 [ 'another tenant\'s slug', 'Basic ' . encode_base64("globex:$key{acme}", '') ],
                 [ 'garbage', 'Basic !!!' ], [ 'none', undef ]) {
        my ($name, $auth) = @$bad;
        $r = form('/v1/gate/tokens/introspect', "token=$token", ($auth ? (Authorization => $auth) : ()));
        is $r->{status}, 401, "$name: 401";
        is $r->{json}{error}, 'invalid_client', "$name: invalid_client (RFC 6749 shape)";
        like $r->{headers}{'www-authenticate'} // '', qr/^Basic/, "$name: a Basic challenge";
    }

    my $inactive = '{"active":false}';
    is introspect('globex', $token)->{body}, $inactive, 'another tenant\'s token: exactly {"active":false}';
    is introspect('acme', new_secret('gat_live_'))->{body}, $inactive, 'unknown: {"active":false}';
    is introspect('acme', 'gat_live_123')->{body}, $inactive, 'malformed: {"active":false}';
    my $short = mint('acme', subject => $ada, expires_in => 1)->{json}{access_token};
    sleep 1.5;
    is introspect('acme', $short)->{body}, $inactive, 'expired: {"active":false}';

    $r = $t->request(POST => '/v1/gate/tokens/introspect', json => { token => $token },
                     headers => [ Authorization => "Bearer $key{acme}" ]);
    is $r->{status}, 415, 'JSON instead of a form: 415';
    $r = form('/v1/gate/tokens/introspect', 'token_type_hint=x', Authorization => "Bearer $key{acme}");
    is $r->{status}, 400, 'no token: 400';
    is $r->{json}{error}, 'invalid_request', 'invalid_request';
};

subtest 'revocation (RFC 7009) holds on every node at once' => sub {
    my $r = mint('acme', subject => $ada, scope => 'read');
    my $victim = $r->{json}{access_token};
    for my $node (qw(n1 n2)) { is use_token($victim, $node), 200, "cached on $node" for 1 .. 3 }

    $r = form('/v1/gate/tokens/revoke', "token=$victim", Authorization => "Bearer $key{globex}");
    is $r->{status}, 200, 'another tenant "revokes" it: 200, as RFC 7009 says';
    is use_token($victim), 200, '... but it still works';

    $r = form('/v1/gate/tokens/revoke', "token=$victim", Authorization => "Bearer $key{acme}");
    is $r->{status}, 200, 'its tenant revokes it: 200';
    is $r->{body}, '', '... with an empty body';
    ok !exists $r->{headers}{'content-type'}, '... that claims no type';
    my $t0 = time;
    my %when;
    while (time - $t0 < 2 && keys %when < 2) {
        for my $node (qw(n1 n2)) { $when{$node} //= time - $t0 if use_token($victim, $node) == 401 }
    }
    ok defined $when{n2} && $when{n2} < 0.1, 'node 2 refuses it within 100 ms of the revoke returning';
    ok defined $when{n1} && $when{n1} < 0.1, 'node 1 too';
    diag sprintf 'refused after %.1f ms (n1), %.1f ms (n2)', map { 1000 * ($when{$_} // 9) } qw(n1 n2);
    is introspect('acme', $victim)->{body}, '{"active":false}', 'introspection says inactive';

    is form('/v1/gate/tokens/revoke', "token=$victim", Authorization => "Bearer $key{acme}")->{status}, 200,
        'revoking again: 200';
    is form('/v1/gate/tokens/revoke', 'token=' . new_secret('gat_live_'), Authorization => "Bearer $key{acme}")->{status},
        200, 'an unknown token: 200';
    is form('/v1/gate/tokens/revoke', 'token=junk', Authorization => "Bearer $key{acme}")->{status}, 200,
        'a malformed token: 200';
    is form('/v1/gate/tokens/revoke', "token=$token")->{status}, 401, 'no client: 401';
};

subtest 'a subject\'s tokens' => sub {
    my $second = mint('acme', subject => $ada, scope => 'profile')->{json};
    my $r = api('acme', GET => "/v1/gate/identities/$ada/tokens");
    is $r->{status}, 200, 'listed';
    my %ids = map { $_->{token_id} => $_ } @{ $r->{json} };
    ok $ids{$token_id} && $ids{$second->{token_id}}, 'the subject\'s live tokens';
    is_deeply [ sort keys %{ $ids{$token_id} } ], [ qw(created_at expires_at scope token_id) ],
        'id, scope, created, expires';
    unlike $r->{body}, qr/gat_live_/, 'never a token';
    is api('globex', GET => "/v1/gate/identities/$ada/tokens")->{status}, 404, 'another tenant: 404';
    is api('globex', DELETE => "/v1/gate/identities/$ada/tokens")->{status}, 404, '... cannot revoke them';
    is use_token($token), 200, 'still valid';

    is api('acme', DELETE => "/v1/gate/identities/$ada/tokens")->{status}, 204, 'revoke them all: 204';
    ok $t->wait_for(sub { use_token($token) == 401 && use_token($second->{access_token}, 'n2') == 401 },
                    timeout => 0.5), 'all refused, on every node';
    is_deeply api('acme', GET => "/v1/gate/identities/$ada/tokens")->{json}, [], 'none listed';
};

subtest 'session exchange' => sub {
    my $mail = "sam-$run\@acme.test";
    my $flow = $t->request(GET => '/self-service/registration/api', headers => [ 'X-Gate-Tenant' => 'acme' ]);
    my $reg = $t->request(POST => "/self-service/registration?flow=$flow->{json}{id}",
                          headers => [ 'X-Gate-Tenant' => 'acme' ],
                          json => { method => 'password', traits => { email => $mail }, password => "Nine quiet owls $run" });
    my $session = $reg->{json}{session_token};
    ok $session, 'a user of A with a session';

    my $r = $t->request(POST => '/v1/gate/tokens', headers => [ 'X-Gate-Tenant' => 'acme', 'X-Session-Token' => $session ]);
    is $r->{status}, 201, 'exchanged' or diag $r->{body};
    is $r->{json}{scope}, 'profile', 'with the tenant\'s default scopes';
    my $tok = $r->{json}{access_token};
    my $in = introspect('acme', $tok)->{json};
    is $in->{sub}, $reg->{json}{identity}{id}, 'for the session\'s identity';
    my $session_end = $reg->{json}{session}{expires_at};
    ok $in->{exp} <= time + 7200, 'no longer than the tenant allows, nor the session lives';

    # the user may narrow the default scopes, never widen them
    my @as = (headers => [ 'X-Gate-Tenant' => 'acme', 'X-Session-Token' => $session ]);
    for my $scope ('read', 'profile write', 'admin') {
        $r = $t->request(POST => '/v1/gate/tokens', @as, json => { scope => $scope });
        is $r->{status}, 422, "asking for \"$scope\" beyond the default scopes: 422";
        is $r->{json}{error}{code}, 'scope_not_allowed', '... scope_not_allowed';
    }
    $r = $t->request(POST => '/v1/gate/tokens', @as, json => { expires_in => 7201 });
    is $r->{status}, 422, 'a session asking past the tenant\'s token_max_ttl: 422, as with a key';
    is $r->{json}{error}{code}, 'invalid_expires_in', '... invalid_expires_in';
    $r = $t->request(POST => '/v1/gate/tokens', @as, json => { scope => 'profile', expires_in => 60 });
    is $r->{status}, 201, 'asking for the default scope itself: 201' or diag $r->{body};
    is $r->{json}{scope}, 'profile', '... with just that scope';
    is $r->{json}{expires_in}, 60, '... and the lifetime asked for';

    $r = $t->request(POST => '/v1/gate/tokens', headers => [ 'X-Gate-Tenant' => 'globex', 'X-Session-Token' => $session ]);
    is $r->{status}, 401, 'the same session through B: 401';
};

subtest 'a session whose identity was deleted mints nothing' => sub {
    my $mail = "dora-$run\@acme.test";
    my $flow = $t->request(GET => '/self-service/registration/api', headers => [ 'X-Gate-Tenant' => 'acme' ]);
    my $reg = $t->request(POST => "/self-service/registration?flow=$flow->{json}{id}",
                          headers => [ 'X-Gate-Tenant' => 'acme' ],
                          json => { method => 'password', traits => { email => $mail }, password => "Ten sleepy cats $run" });
    my ($session, $id) = ($reg->{json}{session_token}, $reg->{json}{identity}{id});
    my @as = (headers => [ 'X-Gate-Tenant' => 'acme', 'X-Session-Token' => $session ]);
    is $t->request(GET => '/sessions/whoami', @as)->{status}, 200, 'the session works (and is cached)';
    is api('acme', DELETE => "/v1/gate/identities/$id")->{status}, 204, 'the identity is deleted';
    my $r = $t->request(POST => '/v1/gate/tokens', @as);
    isnt $r->{status}, 201, 'its cached session cannot mint a token';
};

subtest 'a revocation Redis cannot take is a 503, and a retry completes it' => sub {
    my $tok = mint('acme', subject => $ada)->{json}{access_token};
    is use_token($tok), 200, 'works';
    $t->stop_redis('r1');
    my $r = form('/v1/gate/tokens/revoke', "token=$tok", Authorization => "Bearer $key{acme}");
    is $r->{status}, 503, 'revoke with Redis down: 503';
    is $r->{json}{error}, 'temporarily_unavailable', 'temporarily_unavailable';
    $t->start_redis(name => 'r1');
    ok $t->wait_for(sub {
        form('/v1/gate/tokens/revoke', "token=$tok", Authorization => "Bearer $key{acme}")->{status} == 200
    }, timeout => 5), 'the retry succeeds once Redis is back';
    ok $t->wait_for(sub { use_token($tok) == 401 && use_token($tok, 'n2') == 401 }, timeout => 2),
        'and the token is refused everywhere';
};

subtest 'deleting an identity or disabling its tenant ends its tokens' => sub {
    my $carl = identity('acme', "carl-$run\@acme.test");
    my $tok = mint('acme', subject => $carl)->{json}{access_token};
    is use_token($tok, 'n2'), 200, 'works (cached on n2)';
    is api('acme', DELETE => "/v1/gate/identities/$carl")->{status}, 204, 'identity deleted';
    ok $t->wait_for(sub { use_token($tok, 'n2') == 401 }, timeout => 0.5), 'its token is refused at once';

    my $gtok = mint('globex', subject => $bob)->{json}{access_token};
    is use_token($gtok), 200, 'a token of B works';
    $pg->gatectl(qw(tenant disable globex));
    ok $t->wait_for(sub { use_token($gtok) == 401 && use_token($gtok, 'n2') == 401 }, timeout => 0.5),
        'B disabled: refused on both nodes';
};

$t->allow_log(qr/gate postgres|gate redis/);
$t->finish;
$pg->finish;
done_testing;
