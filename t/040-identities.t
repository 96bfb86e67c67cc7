# gate_api identities: a tenant's backend manages its own end users through
# Gate with its secret key, over Kratos' admin API, and can never see or
# touch another tenant's identities.

use strict;
use warnings;

use Test::More;
use Digest::SHA qw(hmac_sha256);
use MIME::Base64 qw(encode_base64);
use Gate::Test;
use Gate::Store;
use Gate::Kratos;
use Gate::Flows qw(front_conf);

plan skip_all => 'needs the suite services: run through scripts/test'
    unless $ENV{GATE_TEST_KRATOS_ADMIN_PORT};

my $t = Gate::Test->new;
$t->start_redis(name => 'r1');
my $pg = Gate::Store->new($t);

sub conf_for {
    my ($admin_port) = @_;
    (my $conf = <<'EOF') =~ s/%%CONNINFO%%/$pg->conninfo/e;
%%GLOBALS%%
http {
    %%HTTP_GLOBALS%%
    gate_redis 127.0.0.1:%%REDIS_PORT_r1%%;
    gate_postgres "%%CONNINFO%%" pool=2 timeout=1s;
    gate_cache zone=gate:1m;
    gate_kratos_admin /_gate/kratos-admin;

    server {
        listen 127.0.0.1:%%PORT_HTTP%%;

        location /_gate/kratos-admin/ {
            internal;
            proxy_pass http://127.0.0.1:%%ADMIN%%/;
            proxy_pass_request_headers off;
            proxy_set_header Content-Type application/json;
            proxy_set_header Accept application/json;
            proxy_connect_timeout 1s;
            proxy_read_timeout 5s;
            subrequest_output_buffer_size 1m;
        }

        location /v1/gate/identities {
            gate_auth secret_key;
            gate_api identities;
            client_body_buffer_size 64k;
        }
    }
}
EOF
    $conf =~ s/%%ADMIN%%/$admin_port/g;
    return $conf;
}

$t->start_nginx(conf => conf_for($ENV{GATE_TEST_KRATOS_ADMIN_PORT}));

sub new_tenant {
    my ($slug) = @_;
    $pg->gatectl('tenant', 'create', '--slug', $slug, '--name', $slug)->{out} =~ /^(\S+)/ or die;
    my $id = $1;
    my ($key) = $pg->gatectl('key', 'create', $slug, '--quiet')->{out} =~ /^(\S+)/;
    return ($id, $key);
}

my ($a_id, $a_key) = new_tenant('acme');
my ($b_id, $b_key) = new_tenant('globex');
my $run = $$ . int(rand 1e6);

sub api {
    my ($key, $method, $path, %opt) = @_;
    return $t->request($method, "/v1/gate/identities$path",
                       headers => [ Authorization => "Bearer $key", @{ $opt{headers} // [] } ],
                       (exists $opt{json} ? (json => $opt{json}) : ()),
                       (exists $opt{body} ? (body => $opt{body}) : ()));
}

sub kratos_admin {
    my ($method, $path) = @_;
    return $t->request($method, $path, port => $ENV{GATE_TEST_KRATOS_ADMIN_PORT},
                       headers => [ Accept => 'application/json' ]);
}

my $email = "ada-$run\@acme.test";

subtest 'create' => sub {
    my $r = api($a_key, POST => '', json => {
        schema_id => 'user', traits => { email => $email, name => { first => 'Ada' } },
        credentials => { password => { config => { password => "correct horse $run" } } },
        metadata_public => { plan => 'gold' } });
    is $r->{status}, 201, '201 Created' or diag $r->{body};
    like $r->{json}{id} // '', qr/^[0-9a-f-]{36}$/, 'with the identity id';
    is $r->{json}{traits}{email}, $email, 'with its traits';
    is $r->{json}{metadata_public}{plan}, 'gold', 'with the tenant\'s own metadata';
    ok !exists $r->{json}{metadata_admin}, 'never with Gate\'s metadata_admin';
    our $ada = $r->{json}{id};

    my $k = kratos_admin(GET => "/admin/identities/$ada");
    is $k->{json}{metadata_admin}{gate}{tenant_id}, $a_id, 'Kratos holds the tenant in metadata_admin';
    my ($row) = $pg->sql("SELECT tenant_id FROM identities WHERE identity_id = :'id'", id => $ada);
    is $row->[0], $a_id, 'PostgreSQL indexes it under the tenant';
    is $t->redis(r1 => 'GET', "gate:idn:$ada"), $a_id, 'Redis knows its tenant';
};
our $ada;

subtest 'read, replace, patch' => sub {
    my $r = api($a_key, GET => "/$ada");
    is $r->{status}, 200, 'GET 200';
    is $r->{json}{traits}{email}, $email, 'the identity';
    ok !exists $r->{json}{metadata_admin}, 'without metadata_admin';

    $r = api($a_key, PUT => "/$ada", json => {
        schema_id => 'user', traits => { email => $email, name => { first => 'Augusta' } },
        metadata_public => { plan => 'platinum' } });
    is $r->{status}, 200, 'PUT 200' or diag $r->{body};
    is $r->{json}{traits}{name}{first}, 'Augusta', 'traits replaced';
    is kratos_admin(GET => "/admin/identities/$ada")->{json}{metadata_admin}{gate}{tenant_id}, $a_id,
        'a PUT leaves Gate\'s metadata_admin in place';

    $r = api($a_key, PATCH => "/$ada", json => [
        { op => 'replace', path => '/traits/name/first', value => 'Ada' },
        { op => 'add', path => '/metadata_public/team', value => 'engines' } ]);
    is $r->{status}, 200, 'PATCH 200' or diag $r->{body};
    is $r->{json}{traits}{name}{first}, 'Ada', 'patched trait';
    is $r->{json}{metadata_public}{team}, 'engines', 'patched metadata_public';
};

subtest 'another tenant gets 404 for each of them, like an unknown id' => sub {
    my $unknown = api($b_key, GET => '/00000000-0000-4000-8000-000000000000');
    is $unknown->{status}, 404, 'unknown id: 404';
    is $unknown->{json}{error}{code}, 'not_found', 'not_found';

    for my $case ([ GET => undef ], [ PUT => { schema_id => 'user', traits => { email => $email } } ],
                  [ PATCH => [ { op => 'replace', path => '/traits/email', value => 'x@evil.test' } ] ],
                  [ DELETE => undef ]) {
        my ($method, $json) = @$case;
        my $r = api($b_key, $method => "/$ada", (defined $json ? (json => $json) : ()));
        is $r->{status}, 404, "$method by the other tenant: 404";
        is $r->{body}, $unknown->{body}, "$method: the same body as an unknown id";
    }
    is api($a_key, GET => "/$ada")->{json}{traits}{email}, $email, 'the identity is untouched';

    my $r = api($b_key, GET => '');
    is $r->{status}, 200, 'the other tenant lists';
    ok !(grep { $_->{id} eq $ada } @{ $r->{json} // [] }), '... and never sees it';

    $r = api($b_key, GET => "?credentials_identifier=$email");
    is_deeply $r->{json}, [], 'a search by its email finds nothing for the other tenant';
    $r = api($a_key, GET => "?credentials_identifier=$email");
    is scalar @{ $r->{json} // [] }, 1, '... and finds it for its own';
    is $r->{json}[0]{id}, $ada, '... that identity';
    ok !exists $r->{json}[0]{metadata_admin}, '... without metadata_admin';

    for my $bad ('/not-a-uuid', '/00000000-0000-4000-8000-00000000000G', '/' . ('a' x 300),
                 "/00000000-0000-4000-8000-000000000000'--", '/00000000-0000-4000-8000-000000000000/x') {
        $r = api($a_key, GET => $bad);
        is $r->{status}, 404, "malformed id $bad: 404";
    }
};

subtest 'pagination over the tenant\'s own identities' => sub {
    my @ids = ($ada);
    for my $i (1 .. 4) {
        my $r = api($a_key, POST => '', json => { traits => { email => "user$i-$run\@acme.test" } });
        is $r->{status}, 201, "identity $i created";
        push @ids, $r->{json}{id};
    }
    my $other = api($b_key, POST => '', json => { traits => { email => "bob-$run\@globex.test" } });
    is $other->{status}, 201, 'the other tenant has one of its own';

    my (@seen, $pages);
    my $path = '?page_size=2';
    while (defined $path) {
        my $r = api($a_key, GET => $path);
        is $r->{status}, 200, "page " . ++$pages;
        cmp_ok scalar @{ $r->{json} }, '<=', 2, '... of at most page_size';
        push @seen, map { $_->{id} } @{ $r->{json} };
        my ($next) = ($r->{headers}{link} // '') =~ /<[^>]*(\?[^>]*)>; rel="next"/;
        $path = $next;
        last if $pages > 5;
    }
    is $pages, 3, 'five identities in pages of two: three pages';
    is_deeply [ sort @seen ], [ sort @ids ], 'every identity of the tenant exactly once, and no other';
    is_deeply \@seen, [ sort @seen ], 'in a stable order';

    is api($a_key, GET => '?page_size=0')->{status}, 400, 'page_size=0: 400';
    is api($a_key, GET => '?page_size=501')->{status}, 400, 'page_size=501: 400';
    is api($a_key, GET => '?page_token=bogus')->{status}, 400, 'a malformed page_token: 400';
};

subtest 'password import by hash, then login through Kratos' => sub {
    my $password = "imported pass $run";
    my $salt = 'gate-salt-' . $run;
    my ($iter, $block, $u) = (1000, '', '');
    $u = hmac_sha256($salt . pack('N', 1), $password);
    $block = $u;
    for (2 .. $iter) { $u = hmac_sha256($u, $password); $block ^= $u }
    (my $b64s = encode_base64($salt, '')) =~ s/=+$//;
    (my $b64h = encode_base64($block, '')) =~ s/=+$//;
    my $hash = "\$pbkdf2-sha256\$i=$iter,l=32\$$b64s\$$b64h";

    my $mail = "imported-$run\@acme.test";
    my $r = api($a_key, POST => '', json => { traits => { email => $mail },
        credentials => { password => { config => { hashed_password => $hash } } } });
    is $r->{status}, 201, 'created with a PBKDF2 hash' or diag $r->{body};

    # end users log in through Gate's front (which also serves Kratos' hooks)
    $t->start_upstream('APP');
    $t->start_nginx(name => 'front', conf => front_conf(conninfo => $pg->conninfo));
    my @acme = (node => 'front', headers => [ 'X-Gate-Tenant' => 'acme' ]);
    my $flow = $t->request(GET => '/self-service/login/api', @acme);
    my $login = $t->request(POST => "/self-service/login?flow=$flow->{json}{id}", @acme,
                            json => { method => 'password', identifier => $mail, password => $password });
    is $login->{status}, 200, 'Kratos logs the user in with the original password';
    is $login->{json}{session}{identity}{id}, $r->{json}{id}, '... as that identity';
    $t->stop_nginx('front');
};

subtest 'bad input: clear errors, never a 500' => sub {
    my @cases = (
        [ 'invalid JSON', POST => '', body => '{"traits":', headers => [ 'Content-Type' => 'application/json' ],
          400, 'invalid_json' ],
        [ 'a JSON array', POST => '', json => [ 1 ], 400, 'invalid_json' ],
        [ 'wrong content type', POST => '', body => 'traits=x', headers => [ 'Content-Type' => 'text/plain' ],
          415, 'unsupported_media_type' ],
        [ 'body over 64 KiB', POST => '', json => { traits => { email => 'a@b.test', name => { first => 'x' x 70000 } } },
          413, 'body_too_large' ],
        [ 'schema tenant', POST => '', json => { schema_id => 'tenant', traits => { email => 'a@b.test' } },
          422, 'invalid_schema' ],
        [ 'metadata_admin', POST => '', json => { traits => { email => 'a@b.test' }, metadata_admin => { gate => { tenant_id => $b_id } } },
          422, 'metadata_admin_forbidden' ],
        [ 'unknown field', POST => '', json => { traits => { email => 'a@b.test' }, organization_id => 'x' },
          422, 'unknown_field' ],
        [ 'traits missing', POST => '', json => { schema_id => 'user' }, 422, 'invalid_traits' ],
        [ 'duplicate email', POST => '', json => { traits => { email => $email } }, 409, 'conflict' ],
        [ 'a password under 8 characters', POST => '',
          json => { traits => { email => "weak-$run\@acme.test" },
                    credentials => { password => { config => { password => 'abc' } } } }, 422, 'weak_password' ],
        [ 'traits the schema refuses', POST => '', json => { traits => { email => 'not-an-email' } },
          400, 'invalid_request' ],
        [ 'patch of metadata_admin', PATCH => "/$ada",
          json => [ { op => 'replace', path => '/metadata_admin', value => {} } ], 422, 'forbidden_path' ],
        [ 'patch moving from metadata_admin', PATCH => "/$ada",
          json => [ { op => 'move', from => '/metadata_admin/gate', path => '/metadata_public/x' } ], 422, 'forbidden_path' ],
        [ 'patch of schema_id', PATCH => "/$ada",
          json => [ { op => 'replace', path => '/schema_id', value => 'tenant' } ], 422, 'forbidden_path' ],
        [ 'patch of /Metadata_Admin (another case)', PATCH => "/$ada",
          json => [ { op => 'add', path => '/Metadata_Admin', value => { gate => { tenant_id => $b_id } } } ], 422, 'forbidden_path' ],
        [ 'patch of /Schema_Id (another case)', PATCH => "/$ada",
          json => [ { op => 'add', path => '/Schema_Id', value => 'tenant' } ], 422, 'forbidden_path' ],
        [ 'patch of an escaped member', PATCH => "/$ada",
          json => [ { op => 'add', path => '/metadata~0admin', value => {} } ], 422, 'forbidden_path' ],
        [ 'patch of /id', PATCH => "/$ada",
          json => [ { op => 'replace', path => '/id', value => '00000000-0000-4000-8000-000000000000' } ], 422, 'forbidden_path' ],
        [ 'patch replacing the whole', PATCH => "/$ada",
          json => [ { op => 'replace', path => '', value => {} } ], 422, 'forbidden_path' ],
        [ 'PUT with metadata_admin', PUT => "/$ada",
          json => { schema_id => 'user', traits => { email => $email }, metadata_admin => {} }, 422, 'metadata_admin_forbidden' ],
        [ 'method not allowed', DELETE => '', 405, 'method_not_allowed' ],
        [ 'a search for a NUL byte', GET => '?credentials_identifier=ada%00', 400, 'invalid_request' ],
    );
    for my $c (@cases) {
        my ($name, $method, $path, @rest) = @$c;
        my $code = pop @rest;
        my $status = pop @rest;
        my $r = api($a_key, $method => $path, @rest);
        is $r->{status}, $status, "$name: $status";
        is $r->{json}{error}{code}, $code, "$name: $code";
        ok length($r->{json}{error}{message} // ''), "$name: with a message";
    }

    for my $c ([ DELETE => '', 'GET, POST' ], [ POST => "/$ada", 'GET, PUT, PATCH, DELETE' ],
               [ PUT => "/$ada/tokens", 'GET, DELETE' ]) {
        my ($method, $path, $allow) = @$c;
        my $r = api($a_key, $method => $path, ($method eq 'DELETE' ? () : (json => {})));
        is $r->{status}, 405, "$method /v1/gate/identities$path: 405";
        is $r->{headers}{allow}, $allow, "... Allow: $allow";
    }

    my $r = $t->request(GET => '/v1/gate/identities');
    is $r->{status}, 401, 'no key: 401';
    is $r->{json}{error}{code}, 'invalid_key', 'invalid_key';
};

subtest 'delete' => sub {
    my $r = api($a_key, DELETE => "/$ada");
    is $r->{status}, 204, '204 No Content';
    is api($a_key, GET => "/$ada")->{status}, 404, 'gone';
    is kratos_admin(GET => "/admin/identities/$ada")->{status}, 404, 'gone from Kratos';
    my @rows = $pg->sql("SELECT 1 FROM identities WHERE identity_id = :'id'", id => $ada);
    is scalar @rows, 0, 'index row removed';
    is $t->redis(r1 => 'GET', "gate:idn:$ada"), undef, 'Redis entry removed';
};

subtest 'Kratos down: 503 within the timeout' => sub {
    my $k = Gate::Kratos->start($t, name => 'k1');
    $t->stop_nginx('n1');
    $t->start_nginx(name => 'n1', conf => conf_for($k->admin_port));

    my $r = api($a_key, POST => '', json => { traits => { email => "k1-$run\@acme.test" } });
    is $r->{status}, 201, 'a Kratos of our own serves' or diag $r->{body};
    my $id = $r->{json}{id};

    $k->stop;
    $r = api($a_key, GET => "/$id");
    is $r->{status}, 503, 'Kratos stopped: GET 503';
    is $r->{json}{error}{code}, 'unavailable', 'unavailable';
    cmp_ok $r->{elapsed}, '<', 3, 'promptly';
    $r = api($a_key, POST => '', json => { traits => { email => "k2-$run\@acme.test" } });
    is $r->{status}, 503, 'Kratos stopped: POST 503';
    $r = api($a_key, GET => '');
    is $r->{status}, 503, 'Kratos stopped: list 503';
};

$t->finish;
$pg->finish;
done_testing;
