# A tenant's token policy through GET/PUT /v1/gate/settings: defaults when
# nothing is set, a PUT that replaces the policy and holds from the next
# mint on, one tenant's policy never touching another's, every bad body
# refused with nothing changed, and PostgreSQL down answered 503.

use strict;
use warnings;

use Test::More;
use Gate::Test;
use Gate::Store;

my $t = Gate::Test->new;
$t->start_redis(name => 'r1');
my $pg = Gate::Store->new($t, private => 1);

(my $conf = <<'EOF') =~ s/%%CONNINFO%%/$pg->conninfo/e;
%%GLOBALS%%
http {
    %%HTTP_GLOBALS%%
    gate_redis 127.0.0.1:%%REDIS_PORT_r1%% timeout=500ms;
    gate_postgres "%%CONNINFO%%" pool=2 timeout=500ms;
    gate_cache zone=gate:1m ttl=60s;

    server {
        listen 127.0.0.1:%%PORT_HTTP%%;
        default_type application/json;

        location = /v1/gate/settings {
            gate_auth secret_key;
            gate_api settings;
        }

        location = /v1/gate/tokens {
            gate_auth secret_key;
            gate_api tokens;
        }
    }
}
EOF
$t->start_nginx(conf => $conf);
$t->allow_log(qr/gate postgres/);

my (%tenant, %key);
for my $slug (qw(acme globex)) {
    ($tenant{$slug}) = $pg->gatectl('tenant', 'create', '--slug', $slug, '--name', $slug)->{out} =~ /^(\S+)/;
    ($key{$slug}) = $pg->gatectl('key', 'create', $slug, '--quiet')->{out} =~ /^(\S+)/;
}

# Token subjects must be identities of the tenant: seed Gate's index (what
# a Kratos identity created through Gate leaves there; Kratos itself is not
# needed to test the policy).
my %subject = (acme => '0b7f5e2a-1c3d-4e5f-8a9b-0c1d2e3f4a5b', globex => '1c8a6f3b-2d4e-4f60-9bac-1d2e3f4a5b6c');
$pg->sql(q{INSERT INTO identities (identity_id, tenant_id) VALUES (:'id', :'tenant')},
         id => $subject{$_}, tenant => $tenant{$_}) for keys %subject;

sub settings {
    my ($slug, $method, %opt) = @_;
    return $t->request($method, '/v1/gate/settings',
        headers => [ ($slug ? (Authorization => "Bearer $key{$slug}") : ()), @{ $opt{headers} // [] } ],
        (exists $opt{json} ? (json => $opt{json}) : ()), (exists $opt{body} ? (body => $opt{body}) : ()));
}

sub mint {
    my ($slug, %body) = @_;
    return $t->request(POST => '/v1/gate/tokens', json => { subject => $subject{$slug}, %body },
                       headers => [ Authorization => "Bearer $key{$slug}" ]);
}

my %defaults = (allowed_scopes => undef, default_scopes => '', token_ttl => 3600, token_max_ttl => 86400);

subtest 'a tenant with no settings sees the documented defaults' => sub {
    my $r = settings(acme => 'GET');
    is $r->{status}, 200, 'answered 200' or diag $r->{body};
    like $r->{headers}{'content-type'}, qr{^application/json}, 'JSON';
    is_deeply $r->{json}, \%defaults, 'any scope, no default scopes, 1 h tokens, 1 day at most';
    is mint('acme', scope => 'anything:at-all')->{status}, 201, 'and a token may carry any scope';
};

subtest 'without a valid secret key there are no settings' => sub {
    my $r = settings(undef, 'GET');
    is $r->{status}, 401, 'no key: 401';
    like $r->{headers}{'www-authenticate'} // '', qr/^Bearer/, 'with a Bearer challenge';
    is settings(undef, 'GET', headers => [ Authorization => 'Bearer gate_live_sk_' . ('0' x 64) ])->{status},
        401, 'a malformed key: 401';
};

my %policy = (allowed_scopes => [qw(read write profile)], default_scopes => 'profile',
              token_ttl => 600, token_max_ttl => 7200);

subtest 'PUT replaces the policy and answers the policy in force' => sub {
    my $r = settings(acme => 'PUT', json => \%policy);
    is $r->{status}, 200, 'answered 200' or diag $r->{body};
    is_deeply $r->{json}, \%policy, 'the answer is the new policy';
    is_deeply settings(acme => 'GET')->{json}, \%policy, 'GET shows it';
    my ($row) = $pg->sql("SELECT settings::text FROM tenant_settings WHERE tenant_id = :'id'", id => $tenant{acme});
    like $row->[0], qr/"token_max_ttl": 7200/, 'stored in tenant_settings';
};

subtest 'the next mint obeys it' => sub {
    my $r = mint('acme', scope => 'admin');
    is $r->{status}, 422, 'a scope outside allowed_scopes: 422';
    is $r->{json}{error}{code}, 'scope_not_allowed', '... scope_not_allowed';
    like $r->{json}{error}{message}, qr/"admin"/, '... naming the scope';

    $r = mint('acme', scope => 'read write');
    is $r->{status}, 201, 'allowed scopes: 201' or diag $r->{body};
    is $r->{json}{expires_in}, 600, 'the lifetime defaults to token_ttl';

    $r = mint('acme', scope => 'read', expires_in => 7201);
    is $r->{status}, 422, 'longer than token_max_ttl: 422';
    is $r->{json}{error}{code}, 'invalid_expires_in', '... invalid_expires_in';
    is mint('acme', scope => 'read', expires_in => 7200)->{status}, 201, 'token_max_ttl itself: 201';
};

subtest 'one tenant\'s policy is not another\'s' => sub {
    is_deeply settings(globex => 'GET')->{json}, \%defaults, 'globex still has the defaults';
    my $r = mint('globex', scope => 'admin', expires_in => 80000);
    is $r->{status}, 201, 'and mints what acme may not' or diag $r->{body};
    is mint('globex', scope => 'read', expires_in => 86401)->{status}, 422,
        'within globex\'s own (default) maximum only';
};

subtest 'bad bodies are refused and change nothing' => sub {
    my @bad = (
        [ 'not JSON', { body => '{"token_ttl":', headers => [ 'Content-Type' => 'application/json' ] },
          400, 'invalid_json' ],
        [ 'an array', { json => [ 1, 2 ] }, 400, 'invalid_json' ],
        [ 'an empty body', { body => '', headers => [ 'Content-Type' => 'application/json' ] }, 400, 'invalid_json' ],
        [ 'a duplicate member', { body => '{"token_ttl":60,"token_ttl":70}',
          headers => [ 'Content-Type' => 'application/json' ] }, 400, 'invalid_json' ],
        [ 'an unknown setting', { json => { oidc_providers => ['google'] } }, 422, 'unknown_field', qr/"oidc_providers"/ ],
        [ 'token_ttl as text', { json => { token_ttl => '1h' } }, 422, 'invalid_setting', qr/"token_ttl"/ ],
        [ 'token_ttl zero', { json => { token_ttl => 0 } }, 422, 'invalid_setting', qr/"token_ttl"/ ],
        [ 'token_ttl over token_max_ttl', { json => { token_ttl => 600, token_max_ttl => 300 } },
          422, 'invalid_setting', qr/"token_ttl"/ ],
        [ 'token_ttl over the default maximum', { json => { token_ttl => 86401 } }, 422, 'invalid_setting' ],
        [ 'token_max_ttl over a year', { json => { token_max_ttl => 31536001 } }, 422, 'invalid_setting',
          qr/"token_max_ttl"/ ],
        [ 'token_max_ttl negative', { json => { token_max_ttl => -5 } }, 422, 'invalid_setting' ],
        [ 'allowed_scopes a string', { json => { allowed_scopes => 'read' } }, 422, 'invalid_setting',
          qr/"allowed_scopes"/ ],
        [ 'a scope with a quote', { json => { allowed_scopes => [ 're"ad' ] } }, 422, 'invalid_setting' ],
        [ 'a scope with a space', { json => { allowed_scopes => [ 'read write' ] } }, 422, 'invalid_setting' ],
        [ 'an empty scope', { json => { allowed_scopes => [ '' ] } }, 422, 'invalid_setting' ],
        [ 'a scope of 129 characters', { json => { allowed_scopes => [ 'a' x 129 ] } }, 422, 'invalid_setting' ],
        [ 'a scope twice', { json => { allowed_scopes => [ 'read', 'read' ] } }, 422, 'invalid_setting' ],
        [ '257 scopes', { json => { allowed_scopes => [ map { "s$_" } 1 .. 257 ] } }, 422, 'invalid_setting' ],
        [ 'default scopes outside allowed_scopes', { json => { allowed_scopes => ['read'], default_scopes => 'read admin' } },
          422, 'invalid_setting', qr/"default_scopes"/ ],
        [ 'default scopes as an array', { json => { default_scopes => ['read'] } }, 422, 'invalid_setting' ],
        [ 'a form body', { body => 'token_ttl=60', headers => [ 'Content-Type' => 'application/x-www-form-urlencoded' ] },
          415, 'unsupported_media_type' ],
        [ 'no content type', { body => '{}' }, 415, 'unsupported_media_type' ],
        [ 'a body over 16 KiB', { json => { default_scopes => 'a' x 17000 } }, 413, 'body_too_large' ],
    );
    for my $case (@bad) {
        my ($name, $req, $status, $code, $message) = @$case;
        my $r = settings(acme => 'PUT', %$req);
        is $r->{status}, $status, "$name: $status";
        is $r->{json}{error}{code}, $code, "... $code";
        like $r->{json}{error}{message}, $message, '... and the message names it' if $message;
    }
    is_deeply settings(acme => 'GET')->{json}, \%policy, 'the policy is what it was';
    like settings(acme => 'PUT', json => { colour => 'blue' })->{raw}, qr{^HTTP/1\.1 422 Unprocessable Content\r\n},
        'a 422 says its reason phrase';
};

subtest 'default scopes are stored as tokens carry them' => sub {
    my $r = settings(globex => 'PUT', json => { default_scopes => '  read  read write ' });
    is $r->{status}, 200, 'answered 200' or diag $r->{body};
    is $r->{json}{default_scopes}, 'read write', 'one space between scopes, each once';
    is settings(globex => 'PUT', json => {})->{status}, 200, 'and back to the defaults';
};

subtest 'other methods' => sub {
    my $r = settings(acme => 'DELETE');
    is $r->{status}, 405, 'DELETE: 405';
    is $r->{json}{error}{code}, 'method_not_allowed', '... method_not_allowed';
    is $r->{headers}{allow}, 'GET, PUT', '... with Allow';
    is settings(acme => 'POST', json => \%policy)->{status}, 405, 'POST: 405';
};

subtest 'PUT {} brings the defaults back' => sub {
    my $r = settings(acme => 'PUT', json => {});
    is $r->{status}, 200, 'answered 200';
    is_deeply $r->{json}, \%defaults, 'the defaults';
    is mint('acme', scope => 'admin')->{status}, 201, 'and any scope again';
    is_deeply settings(acme => 'PUT', json => { allowed_scopes => undef, token_max_ttl => 120 })->{json},
        { %defaults, token_max_ttl => 120, token_ttl => 120 },
        'a maximum under the default lifetime caps it';
};

subtest 'PostgreSQL down: 503, and back without a reload' => sub {
    $pg->stop;
    for my $method (qw(GET PUT)) {
        my $r = settings(acme => $method, ($method eq 'PUT' ? (json => \%policy) : ()));
        is $r->{status}, 503, "$method: 503";
        is $r->{json}{error}{code}, 'unavailable', '... unavailable';
        cmp_ok $r->{elapsed}, '<', 3, '... within the timeout';
    }
    $pg->start;
    ok $t->wait_for(sub { settings(acme => 'GET')->{status} == 200 }, timeout => 10), 'answers again';
    is settings(acme => 'GET')->{json}{token_max_ttl}, 120, 'with what was stored before';
};

$t->finish;
$pg->finish;
done_testing;
