# End users of tenant A register, log in, change their password, recover
# and verify their account through Gate against the real Kratos, and
# nothing of A can be used through tenant B.

use strict;
use warnings;

use Test::More;
use Time::HiRes qw(sleep time);
use JSON::PP ();
use Gate::Test;
use Gate::Store;
use Gate::Flows qw(front_conf);

plan skip_all => 'needs the suite services: run through scripts/test'
    unless $ENV{GATE_TEST_KRATOS_ADMIN_PORT} && $ENV{GATE_TEST_HOOK_PORT};

my $t = Gate::Test->new;
$t->start_redis(name => 'r1');
$t->start_upstream('APP');
my $courier = Gate::Upstream->start(port => $ENV{GATE_TEST_COURIER_PORT}, dir => $t->dir);
my $pg = Gate::Store->new($t);

$t->start_nginx(conf => front_conf(conninfo => $pg->conninfo));

my %tenant;
for my $slug (qw(acme globex)) {
    ($tenant{$slug}) = $pg->gatectl('tenant', 'create', '--slug', $slug, '--name', $slug)->{out} =~ /^(\S+)/;
}
my $run = $$ . int(rand 1e6);

sub req {
    my ($tenant, $method, $path, %opt) = @_;
    return $t->request($method, $path,
        headers => [ ($tenant ? ('X-Gate-Tenant' => $tenant) : ()), Accept => 'application/json',
                     @{ $opt{headers} // [] } ],
        (exists $opt{json} ? (json => $opt{json}) : ()), (exists $opt{body} ? (body => $opt{body}) : ()));
}

sub register {
    my ($tenant, $email, $password) = @_;
    my $flow = req($tenant, GET => '/self-service/registration/api');
    return $flow unless $flow->{status} == 200;
    return req($tenant, POST => "/self-service/registration?flow=$flow->{json}{id}",
               json => { method => 'password', traits => { email => $email }, password => $password });
}

sub login {
    my ($tenant, $email, $password) = @_;
    my $flow = req($tenant, GET => '/self-service/login/api');
    return $flow unless $flow->{status} == 200;
    return req($tenant, POST => "/self-service/login?flow=$flow->{json}{id}",
               json => { method => 'password', identifier => $email, password => $password });
}

sub messages {
    my ($r) = @_;
    my @m = @{ $r->{json}{ui}{messages} // [] };
    push @m, @{ $_->{messages} // [] } for @{ $r->{json}{ui}{nodes} // [] };
    return [ map { "$_->{id}: $_->{text}" } @m ];
}

my $ada = "ada-$run\@acme.test";
my %courier_seen;
my $pw = "Correct horse battery $run";
my ($ada_id, $ada_token);

subtest 'register in A through an API flow' => sub {
    my $r = register('acme', $ada, $pw);
    is $r->{status}, 200, 'registration succeeds' or diag $r->{body};
    $ada_id = $r->{json}{identity}{id};
    $ada_token = $r->{json}{session_token};
    like $ada_token // '', qr/^ory_st_/, 'with a session token';

    my $k = $t->request(GET => "/admin/identities/$ada_id", port => $ENV{GATE_TEST_KRATOS_ADMIN_PORT});
    is $k->{json}{metadata_admin}{gate}{tenant_id}, $tenant{acme}, 'the identity carries A in metadata_admin';
    my ($row) = $pg->sql("SELECT tenant_id FROM identities WHERE identity_id = :'id'", id => $ada_id);
    is $row->[0], $tenant{acme}, 'PostgreSQL indexes it under A';
    is $t->redis(r1 => 'GET', "gate:idn:$ada_id"), $tenant{acme}, 'Redis knows its tenant';
};

subtest 'register in A through a browser flow, with its CSRF cookie' => sub {
    my $flow = req('acme', GET => '/self-service/registration/browser');
    is $flow->{status}, 200, 'an SPA browser flow (JSON)';
    like $flow->{json}{request_url}, qr{^http://localhost/self-service/registration/browser},
        'Kratos saw the client\'s host, not nginx\'s upstream name';
    my @cookies = map { /^([^;]+)/ } (ref $flow->{headers}{'set-cookie'} ? @{ $flow->{headers}{'set-cookie'} }
                                                                         : ($flow->{headers}{'set-cookie'} // ()));
    ok @cookies, 'Kratos\' CSRF cookie reaches the client';
    my ($csrf) = map { $_->{attributes}{value} } grep { ($_->{attributes}{name} // '') eq 'csrf_token' }
                 @{ $flow->{json}{ui}{nodes} };
    my $email = "bea-$run\@acme.test";
    my $r = req('acme', POST => "/self-service/registration?flow=$flow->{json}{id}",
                headers => [ Cookie => join('; ', @cookies) ],
                json => { method => 'password', csrf_token => $csrf, traits => { email => $email },
                          password => $pw });
    is $r->{status}, 200, 'registration succeeds' or diag $r->{body};
    my $id = $r->{json}{identity}{id};
    my $k = $t->request(GET => "/admin/identities/$id", port => $ENV{GATE_TEST_KRATOS_ADMIN_PORT});
    is $k->{json}{metadata_admin}{gate}{tenant_id}, $tenant{acme}, 'bound to A';
};

subtest 'log in in A; the session is A\'s only' => sub {
    my $r = login('acme', $ada, $pw);
    is $r->{status}, 200, 'login in A' or diag $r->{body};
    my $token = $r->{json}{session_token};
    $ada_token = $token;

    $r = req('acme', GET => '/sessions/whoami', headers => [ 'X-Session-Token' => $token ]);
    is $r->{status}, 200, 'whoami through A: 200';
    is $r->{json}{identity}{id}, $ada_id, '... the identity';

    $r = req('globex', GET => '/sessions/whoami', headers => [ 'X-Session-Token' => $token ]);
    is $r->{status}, 401, 'whoami through B: 401';
    is $r->{json}{error}{code}, 'invalid_session', '... invalid_session';
    is $r->{headers}{'www-authenticate'}, 'Bearer error="invalid_token"', '... with a challenge';

    $r = req('acme', GET => '/app/orders', headers => [ Authorization => "Bearer $token" ]);
    is $r->{status}, 200, 'A\'s app accepts the session (bearer)';
    ok !exists $r->{headers}{'www-authenticate'}, '... and the answer carries no challenge';
    is $r->{json}{headers}{'x-gate-subject'}, $ada_id, '... and is told the subject';
    is $r->{json}{headers}{'x-gate-tenant-id'}, $tenant{acme}, '... and the tenant';
    is req('globex', GET => '/app/orders', headers => [ Authorization => "Bearer $token" ])->{status}, 401,
        'B\'s app refuses it';
    $r = req('acme', GET => '/app/orders');
    is $r->{status}, 401, 'no session: 401';
    is $r->{headers}{'www-authenticate'}, 'Bearer', '... with a bare Bearer challenge';
};

# What a failed login answers, less what differs between any two flows.
sub failure_shape {
    my ($r) = @_;
    my %flow = %{ $r->{json} // {} };
    delete @flow{qw(id created_at updated_at issued_at expires_at request_url)};
    my %ui = %{ $flow{ui} // {} };
    delete $ui{action};
    my @nodes = map { my %n = %$_; my %a = %{ $n{attributes} // {} };
                      delete $a{value} if ($a{name} // '') eq 'csrf_token';
                      $n{attributes} = \%a; \%n } @{ $ui{nodes} // [] };
    return { %flow, ui => { %ui, nodes => \@nodes }, status => $r->{status} };
}

sub login_form {
    my ($tenant, $email, $password, $browser) = @_;
    my $flow = req($tenant, GET => "/self-service/login/" . ($browser ? 'browser' : 'api'));
    my @cookies = map { /^([^;]+)/ } (ref $flow->{headers}{'set-cookie'} ? @{ $flow->{headers}{'set-cookie'} }
                                                                         : ($flow->{headers}{'set-cookie'} // ()));
    my ($csrf) = map { $_->{attributes}{value} } grep { ($_->{attributes}{name} // '') eq 'csrf_token' }
                 @{ $flow->{json}{ui}{nodes} };
    my $enc = sub { (my $v = shift) =~ s/([^A-Za-z0-9_.~-])/sprintf '%%%02X', ord $1/ge; $v };
    my $body = join '&', map { "$_->[0]=" . $enc->($_->[1]) }
        ([ method => 'password' ], [ identifier => $email ], [ password => $password ],
         ($browser ? ([ csrf_token => $csrf ]) : ()));
    my $r = req($tenant, POST => "/self-service/login?flow=$flow->{json}{id}",
                headers => [ 'Content-Type' => 'application/x-www-form-urlencoded',
                             ($browser ? (Cookie => join('; ', @cookies)) : ()) ],
                body => $body);
    # what the browser's UI would read back afterwards
    my $stored = req($tenant, GET => "/self-service/login/flows?id=$flow->{json}{id}",
                     headers => [ ($browser ? (Cookie => join('; ', @cookies)) : ()) ]);
    return ($r, $stored);
}

subtest 'A\'s credentials through B\'s login look exactly like a wrong password' => sub {
    my $cross = login('globex', $ada, $pw);
    my $wrong = login('globex', $ada, 'not the password at all');
    my $own_wrong = login('acme', $ada, 'not the password at all');
    is $cross->{status}, 400, 'refused';
    ok !defined $cross->{json}{session_token}, 'and no session';
    like join(' ', @{ messages($cross) }), qr/^4000006: The provided credentials are invalid/,
        'Kratos\' own invalid-credentials message';
    is_deeply failure_shape($cross), failure_shape($wrong),
        'the right password through B answers what a wrong one does, field by field';
    is_deeply failure_shape($cross), failure_shape($own_wrong),
        '... and what a wrong password in A answers';
    ok !exists $cross->{json}{active}, '... no method marked active';
    my ($node) = grep { ($_->{attributes}{name} // '') eq 'identifier' } @{ $cross->{json}{ui}{nodes} };
    is $node->{attributes}{value}, $ada, '... and the identifier given back, as for a wrong password';

    my ($ucross) = login('globex', uc $ada, $pw);
    is_deeply failure_shape($ucross), failure_shape(login('globex', uc $ada, 'wrong again')),
        'the same with the identifier in another case';

    for my $browser (0, 1) {
        my $kind = $browser ? 'browser' : 'API';
        my ($c, $c_stored) = login_form('globex', $ada, $pw, $browser);
        my ($w, $w_stored) = login_form('globex', $ada, 'not it either', $browser);
        is $c->{status}, $w->{status}, "a form-encoded $kind login: the same status ($c->{status})";
        is_deeply failure_shape($c), failure_shape($w), "... the same answer";
        is_deeply failure_shape($c_stored), failure_shape($w_stored), "... and the same flow read back";
    }

    my ($ok) = login_form('acme', $ada, $pw, 0);
    is $ok->{status}, 200, 'a form-encoded login in A itself still works';
    ok $ok->{json}{session_token}, '... with a session';
    is login('acme', $ada, $pw)->{status}, 200, 'and so does a JSON one';
};

subtest 'a login body Gate cannot read for certain is refused, not passed' => sub {
    my $flow = req('globex', GET => '/self-service/login/api');
    my $path = "/self-service/login?flow=$flow->{json}{id}";
    my $r = req('globex', POST => $path, headers => [ 'Content-Type' => 'application/json' ],
                body => qq({"method":"password","identifier":"nobody\@globex.test","identifier":"$ada","password":"$pw"}));
    is $r->{status}, 400, 'JSON naming the identifier twice: 400';
    is $r->{json}{error}{code}, 'invalid_request', '... invalid_request';
    $r = req('globex', POST => $path, headers => [ 'Content-Type' => 'application/x-www-form-urlencoded' ],
             body => "method=password&identifier=nobody%40globex.test&identifier=" . $ada . "&password=x");
    is $r->{status}, 400, 'a form naming it twice: 400';
    $r = req('globex', POST => $path, headers => [ 'Content-Type' => 'application/x-www-form-urlencoded' ],
             body => "method=password&identifier=" . $ada . "%00&password=x");
    is $r->{status}, 400, 'an identifier with a NUL byte: 400, not a 503 from Kratos\' database';
    $r = req('globex', POST => $path, headers => [ 'Content-Type' => 'multipart/form-data; boundary=x' ],
             body => "--x\r\nContent-Disposition: form-data; name=\"method\"\r\n\r\npassword\r\n--x--\r\n");
    is $r->{status}, 415, 'multipart: 415';
    is $r->{json}{error}{code}, 'unsupported_media_type', '... unsupported_media_type';
};

subtest 'a registration flow Gate did not create is interrupted by the hook' => sub {
    # straight at Kratos, past Gate: no tenant can be given to the identity
    my $port = $ENV{GATE_TEST_KRATOS_PUBLIC_PORT};
    my $flow = $t->request(GET => '/self-service/registration/api', port => $port);
    is $flow->{status}, 200, 'a flow made at Kratos directly';
    my $r = $t->request(POST => "/self-service/registration?flow=$flow->{json}{id}", port => $port,
                        json => { method => 'password', traits => { email => "stray-$run\@acme.test" },
                                  password => "Eleven green frogs $run" });
    is $r->{status}, 400, 'registration refused';
    like join(' ', @{ messages($r) }), qr/^4000001: This registration did not start here/,
        'with the hook\'s Kratos-shaped message';
    ok !$r->{json}{identity}, 'no identity was made';
};

subtest 'A\'s flow id used with B' => sub {
    my $flow = req('acme', GET => '/self-service/login/api');
    my $id = $flow->{json}{id};
    my $unknown = req('globex', GET => '/self-service/login/flows?id=00000000-0000-4000-8000-000000000000');
    is $unknown->{status}, 404, 'an unknown flow: 404';

    my $r = req('globex', GET => "/self-service/login/flows?id=$id");
    is $r->{status}, 404, 'fetching A\'s flow through B: 404';
    is $r->{body}, $unknown->{body}, '... as if it did not exist';
    $r = req('globex', POST => "/self-service/login?flow=$id",
             json => { method => 'password', identifier => $ada, password => $pw });
    is $r->{status}, 404, 'submitting A\'s flow through B: 404';
    is $r->{body}, $unknown->{body}, '... as if it did not exist';
    is req('acme', GET => "/self-service/login/flows?id=$id")->{status}, 200, 'through A it is fine';
};

subtest 'malformed flow ids: 404 without a lookup' => sub {
    my $before = ($t->redis(r1 => 'INFO', 'commandstats') =~ /cmdstat_get:calls=(\d+)/)[0] // 0;
    for my $bad ('nope', '00000000-0000-4000-8000-00000000000', "x'%20OR%20'1'='1", 'A' x 300,
                 '00000000-0000-4000-8000-00000000000G', '') {
        my $r = req('acme', GET => "/self-service/login/flows?id=$bad");
        is $r->{status}, 404, "id \"" . substr($bad, 0, 20) . "\": 404";
    }
    my $after = ($t->redis(r1 => 'INFO', 'commandstats') =~ /cmdstat_get:calls=(\d+)/)[0] // 0;
    is $after, $before, 'no Redis lookup for any of them';
};

subtest 'tenants: missing, unknown, disabled' => sub {
    my $r = req(undef, GET => '/self-service/login/api');
    is $r->{status}, 400, 'no tenant header: 400';
    is $r->{json}{error}{code}, 'tenant_required', 'tenant_required';
    $r = req('nosuch', GET => '/self-service/login/api');
    is $r->{status}, 404, 'unknown tenant: 404';
    is $r->{json}{error}{code}, 'tenant_not_found', 'tenant_not_found';
    $r = req("acme'; DROP TABLE tenants;--", GET => '/self-service/login/api');
    is $r->{status}, 404, 'injection-shaped tenant: 404';
    $r = req($tenant{acme}, GET => '/self-service/login/api');
    is $r->{status}, 200, 'a tenant may also be named by its id';

    $pg->gatectl(qw(tenant create --slug initech --name Initech));
    is req('initech', GET => '/self-service/login/api')->{status}, 200, 'a new tenant works';
    $pg->gatectl(qw(tenant disable initech));
    ok $t->wait_for(sub { req('initech', GET => '/self-service/login/api')->{status} == 403 }, timeout => 1),
        'disabled: 403';
    is req('initech', GET => '/self-service/login/api')->{json}{error}{code}, 'tenant_disabled', 'tenant_disabled';
};

subtest 'settings: password change in A, then login with the new password' => sub {
    my $flow = req('acme', GET => '/self-service/settings/api', headers => [ 'X-Session-Token' => $ada_token ]);
    is $flow->{status}, 200, 'settings flow created with the session' or diag $flow->{body};
    my $other = req('globex', GET => '/self-service/settings/api', headers => [ 'X-Session-Token' => $ada_token ]);
    is $other->{status}, 401, 'the same session through B: 401';

    my $new = "New horse battery $run";
    my $r = req('acme', POST => "/self-service/settings?flow=$flow->{json}{id}",
                headers => [ 'X-Session-Token' => $ada_token ],
                json => { method => 'password', password => $new });
    is $r->{status}, 200, 'password changed' or diag $r->{body};
    is login('acme', $ada, $pw)->{status}, 400, 'the old password no longer works';
    my $in = login('acme', $ada, $new);
    is $in->{status}, 200, 'the new one does';
    $pw = $new;
    $ada_token = $in->{json}{session_token};
};

sub code_for {
    my ($email, $field) = @_;
    my $code;
    $t->wait_for(sub {
        for my $req (reverse $courier->requests) {
            my $b = eval { JSON::PP::decode_json($req->{body}) } or next;
            next unless ($b->{recipient} // '') eq $email && defined $b->{$field};
            $code = $b->{$field};
            return 1;
        }
        return 0;
    }, timeout => 15, interval => 0.2);
    return $code;
}

subtest 'recovery by code in A, and not of A\'s account through B' => sub {
    my $flow = req('acme', GET => '/self-service/recovery/api');
    is $flow->{status}, 200, 'recovery flow';
    my $r = req('acme', POST => "/self-service/recovery?flow=$flow->{json}{id}",
                json => { method => 'code', email => $ada });
    is $r->{status}, 200, 'code sent' or diag $r->{body};
    my $code = code_for($ada, 'recovery_code');
    like $code // '', qr/^\d{6}$/, 'the courier delivered a six-digit code over HTTP';

    $r = req('acme', POST => "/self-service/recovery?flow=$flow->{json}{id}",
             json => { method => 'code', code => '000000' eq $code ? '111111' : '000000' });
    is $r->{status}, 200, 'a wrong code is refused in the flow';
    like join(' ', @{ messages($r) }), qr/invalid or has already been used/i, '... saying so';

    $r = req('acme', POST => "/self-service/recovery?flow=$flow->{json}{id}",
             json => { method => 'code', code => $code });
    is $r->{status}, 422, 'the right code recovers the account';
    like $r->{json}{redirect_browser_to} // '', qr{/ui/settings\?flow=[0-9a-f-]{36}},
        '... and Kratos moves on to setting a new password';

    # tenant B's UI can ask Kratos to mail A's user a code (Kratos knows no
    # tenants), but using it through B is refused
    my $other = req('globex', GET => '/self-service/recovery/api');
    $courier_seen{$ada} = scalar grep { ($_->{body} // '') =~ /\Q$ada\E/ } $courier->requests;
    $r = req('globex', POST => "/self-service/recovery?flow=$other->{json}{id}",
             json => { method => 'code', email => $ada });
    is $r->{status}, 200, 'B asks for a code for A\'s address';
    my $stolen;
    $t->wait_for(sub {
        my @c = grep { ($_->{recipient} // '') eq $ada && defined $_->{recovery_code} }
                map { eval { JSON::PP::decode_json($_->{body}) } // () } $courier->requests;
        $stolen = $c[-1]{recovery_code} if @c > 1;
        return defined $stolen;
    }, timeout => 15, interval => 0.2);
    $r = req('globex', POST => "/self-service/recovery?flow=$other->{json}{id}",
             json => { method => 'code', code => $stolen // '123456' });
    isnt $r->{status}, 422, 'the code does not recover A\'s account through B';
    ok !$r->{json}{redirect_browser_to}, '... no settings flow is handed out';
};

subtest 'verification by code in A' => sub {
    my $mail = "vera-$run\@acme.test";
    is register('acme', $mail, $pw)->{status}, 200, 'registered';
    my $flow = req('acme', GET => '/self-service/verification/api');
    is $flow->{status}, 200, 'verification flow';
    my $r = req('acme', POST => "/self-service/verification?flow=$flow->{json}{id}",
                json => { method => 'code', email => $mail });
    is $r->{status}, 200, 'code requested' or diag $r->{body};
    my $code;
    $t->wait_for(sub {
        my @c = grep { ($_->{recipient} // '') eq $mail && defined $_->{verification_code} }
                map { eval { JSON::PP::decode_json($_->{body}) } // () } $courier->requests;
        $code = $c[-1]{verification_code} if @c >= 2;    # one at registration, one now
        return defined $code;
    }, timeout => 15, interval => 0.2);
    like $code // '', qr/^\d{6}$/, 'the courier delivered the code';
    $r = req('acme', POST => "/self-service/verification?flow=$flow->{json}{id}",
             json => { method => 'code', code => $code });
    is $r->{status}, 200, 'verified' or diag $r->{body};
    is $r->{json}{state}, 'passed_challenge', 'the flow says so';
};

subtest 'logout through Gate ends the session on every node at once' => sub {
    my $in = login('acme', $ada, $pw);
    my $token = $in->{json}{session_token};
    is req('acme', GET => '/sessions/whoami', headers => [ 'X-Session-Token' => $token ])->{status}, 200,
        'session works (and is cached)';
    my $r = $t->request(DELETE => '/self-service/logout/api', json => { session_token => $token });
    is $r->{status}, 204, 'logout: 204';
    is req('acme', GET => '/sessions/whoami', headers => [ 'X-Session-Token' => $token ])->{status}, 401,
        'whoami right after: 401';
    is req('acme', GET => '/app/x', headers => [ 'X-Session-Token' => $token ])->{status}, 401,
        'the app refuses it too';
};

subtest 'Redis down: flows answer 503, not a hang' => sub {
    $t->stop_redis('r1');
    my $r = req('acme', GET => '/self-service/login/api');
    is $r->{status}, 503, 'flow creation: 503';
    is $r->{json}{error}{code}, 'unavailable', 'unavailable';
    $r = req('acme', GET => '/self-service/login/flows?id=00000000-0000-4000-8000-000000000000');
    is $r->{status}, 503, 'flow check: 503';
    cmp_ok $r->{elapsed}, '<', 2, 'promptly';
    $t->start_redis(name => 'r1');
    ok $t->wait_for(sub { req('acme', GET => '/self-service/login/api')->{status} == 200 }, timeout => 5),
        'back when Redis is';
};

$t->allow_log(qr/gate redis|gate postgres/);
$t->finish;
$courier->stop;
$pg->finish;
done_testing;
