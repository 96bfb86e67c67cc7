# gate_auth secret_key and scripts/gatectl: tenant secret keys in every
# state (valid, unknown, revoked, expired, rotated, tenant disabled),
# PostgreSQL as the truth behind Redis, revocation on two nodes at once.

use strict;
use warnings;

use Test::More;
use Time::HiRes qw(time sleep);
use Gate::Test;
use Gate::Store;
use Gate::Token qw(new_secret with_checksum sha256_hex);

my $t = Gate::Test->new;
$t->start_redis(name => 'r1');
$t->start_upstream('APP');
my $pg = Gate::Store->new($t);

(my $conf = <<'EOF') =~ s/%%CONNINFO%%/$pg->conninfo/e;
%%GLOBALS%%
http {
    %%HTTP_GLOBALS%%
    log_format gate '$status $gate_decision "$gate_deny_reason" "$gate_tenant_id" "$gate_key_id"';
    access_log %%TESTDIR%%/gate.log gate;

    gate_redis 127.0.0.1:%%REDIS_PORT_r1%%;
    gate_postgres "%%CONNINFO%%" pool=2 timeout=1s;
    gate_cache zone=gate:1m ttl=60s;

    server {
        listen 127.0.0.1:%%PORT_HTTP%%;

        location /v1/ {
            gate_auth secret_key;
            proxy_pass http://127.0.0.1:%%PORT_APP%%;
        }

        location /tokens/ {
            gate_auth token;
            proxy_pass http://127.0.0.1:%%PORT_APP%%;
        }
    }
}
EOF
$t->start_nginx(name => 'n1', conf => $conf);
$t->start_nginx(name => 'n2', conf => $conf);

sub ctl {
    my $r = $pg->gatectl(@_);
    return $r;
}

sub ok_ctl {
    my $r = ctl(@_);
    is $r->{rc}, 0, "gatectl @_[0, 1] succeeds" or diag $r->{err};
    return $r->{out};
}

sub call {
    my ($key, %opt) = @_;
    return $t->request(GET => $opt{path} // '/v1/things', node => $opt{node} // 'n1',
                       headers => [ Authorization => "Bearer $key" ]);
}

sub hmget_calls {
    my $info = $t->redis(r1 => 'INFO', 'commandstats');
    return $info =~ /cmdstat_hmget:calls=(\d+)/ ? $1 : 0;
}

my $acme_id = ok_ctl(qw(tenant create --slug acme --name), 'Acme Inc');
chomp $acme_id;
like $acme_id, qr/^[0-9a-f-]{36}$/, 'tenant create prints the tenant id';
my $globex_id = ok_ctl(qw(tenant create --slug globex --name Globex));
chomp $globex_id;

my $out = ok_ctl(qw(key create acme));
my ($key) = $out =~ /^key:\s+(gate_live_sk_[0-9a-f]{64})$/m;
my ($key_id) = $out =~ /^key_id:\s+(\S+)$/m;
ok $key, 'key create prints the key once';

my ($stored) = $pg->sql("SELECT key_hash, display FROM api_keys WHERE id = :'id'", id => $key_id);
is $stored->[0], sha256_hex($key), 'only the SHA-256 of the key is stored';
unlike join(' ', @$stored), qr/\Q$key\E/, 'the key itself is nowhere in the row';
like $out, qr/shown once/, 'the operator is told it is shown once';

subtest 'a valid key' => sub {
    my $r = call($key);
    is $r->{status}, 200, 'allowed';
    is $r->{json}{headers}{'x-gate-tenant-id'}, $acme_id, 'upstream sees the tenant';
    is $r->{json}{headers}{'x-gate-key-id'}, $key_id, 'upstream sees the key id';
    is call($key, node => 'n2')->{status}, 200, 'allowed on the second node too';
    is $t->redis(r1 => 'HGET', 'gate:key:' . sha256_hex($key), 'tenant'), $acme_id,
        'the record read from PostgreSQL was written back to Redis';
};

subtest 'malformed and unknown keys' => sub {
    my $calls = hmget_calls();
    for my $bad (with_checksum('gate_test_sk_' . ('a' x 56)), substr($key, 0, -1) . 'x',
                 uc($key), $key . '0', new_secret('gat_live_')) {
        my $r = call($bad);
        is $r->{status}, 401, 'malformed: 401';
        is $r->{json}{error}{code}, 'invalid_key', 'malformed: invalid_key';
    }
    is hmget_calls(), $calls, 'no malformed key caused a lookup';

    my $unknown = call(new_secret('gate_live_sk_'));
    is $unknown->{status}, 401, 'unknown: 401';
    is $unknown->{json}{error}{code}, 'invalid_key', 'unknown: invalid_key';
    my $missing = $t->request(GET => '/v1/things');
    is $missing->{status}, 401, 'missing: 401';
    is $missing->{headers}{'www-authenticate'}, 'Bearer', 'missing: bare challenge';
};

subtest 'revocation is seen on both nodes within 100 ms' => sub {
    my ($k) = ok_ctl(qw(key create acme)) =~ /^key:\s+(\S+)$/m;
    my ($id) = ctl(qw(key list acme))->{out} =~ /^(\S+)\s+gate_live_sk_\Q${\ substr($k, 13, 8)}\E/m;
    ok $id, 'key list shows the new key by its display prefix';
    for my $node (qw(n1 n2)) { is call($k, node => $node)->{status}, 200, "cached on $node" for 1 .. 3 }

    ok_ctl('key', 'revoke', $id);
    my $t0 = time;
    my %when;
    while (time - $t0 < 2 && keys %when < 2) {
        for my $node (qw(n1 n2)) {
            $when{$node} //= time - $t0 if call($k, node => $node)->{status} == 401;
        }
    }
    ok defined $when{$_} && $when{$_} < 0.1, "$_ refuses within 100 ms of gatectl returning"
        for qw(n1 n2);
    diag sprintf 'refused after %.1f ms (n1), %.1f ms (n2)', map { 1000 * ($when{$_} // 9) } qw(n1 n2);

    my $revoked = call($k);
    my $unknown = call(new_secret('gate_live_sk_'));
    is $revoked->{body}, $unknown->{body}, 'a revoked key gets the same body as an unknown one';
    like ctl(qw(key list acme))->{out}, qr/^\Q$id\E.*revoked$/m, 'key list shows it revoked';
};

subtest 'expired key' => sub {
    my ($k) = ok_ctl(qw(key create acme --expires-in 2s)) =~ /^key:\s+(\S+)$/m;
    is call($k)->{status}, 200, 'valid before its end';
    sleep 2.5;
    is call($k)->{status}, 401, 'refused after it (even though it was cached)';
    is call($k, node => 'n2')->{status}, 401, 'refused on the other node';
};

subtest 'rotation with an overlap' => sub {
    my ($k) = ok_ctl(qw(key create acme)) =~ /^key:\s+(\S+)$/m;
    my ($id) = $pg->sql("SELECT id FROM api_keys WHERE key_hash = :'h'", h => sha256_hex($k));
    is call($k)->{status}, 200, 'old key works';

    my $out = ok_ctl('key', 'rotate', $id->[0], '--overlap', '3s');
    my ($new) = $out =~ /^key:\s+(\S+)$/m;
    isnt $new, $k, 'rotate prints a new key';
    is call($new)->{status}, 200, 'the new key works at once';
    is call($k)->{status}, 200, 'the old key still works within the overlap';
    is call($k, node => 'n2')->{status}, 200, '... on every node';
    sleep 3.5;
    is call($k)->{status}, 401, 'the old key is refused after the overlap';
    is call($new)->{status}, 200, 'the new key goes on working';
};

subtest 'a disabled tenant' => sub {
    my ($gk) = ok_ctl(qw(key create globex)) =~ /^key:\s+(\S+)$/m;
    is call($gk)->{status}, 200, 'globex key works';
    ok_ctl(qw(tenant disable globex));
    ok $t->wait_for(sub { call($gk)->{status} == 401 && call($gk, node => 'n2')->{status} == 401 },
                    timeout => 0.5), 'refused on both nodes once the tenant is disabled';
    is call($key)->{status}, 200, 'another tenant is not affected';
    ok_ctl(qw(tenant enable globex));
    ok $t->wait_for(sub { call($gk)->{status} == 200 }, timeout => 2),
        'works again after the tenant is enabled';
};

subtest 'Redis is a cache: FLUSHALL loses nothing' => sub {
    my $tok_out = ok_ctl(qw(token create acme --subject user-1 --scope read --ttl 1h));
    my ($tok) = $tok_out =~ /^token:\s+(\S+)$/m;
    my ($tok_id) = $tok_out =~ /^token_id:\s+(\S+)$/m;
    my ($tok2) = ok_ctl(qw(token create acme --subject user-2 --ttl 1h)) =~ /^token:\s+(\S+)$/m;
    ok_ctl('token', 'revoke', $tok_id);
    my ($dead) = ok_ctl(qw(key create acme)) =~ /^key:\s+(\S+)$/m;
    my ($dead_id) = $pg->sql("SELECT id FROM api_keys WHERE key_hash = :'h'", h => sha256_hex($dead));
    ok_ctl('key', 'revoke', $dead_id->[0]);

    $t->redis(r1 => 'FLUSHALL');
    $t->redis(r1 => 'PUBLISH', 'gate:invalidate', 'all');
    sleep 0.1;

    is call($key)->{status}, 200, 'a valid key still works (from PostgreSQL)';
    is call($tok2, path => '/tokens/x')->{status}, 200, 'a valid token still works';
    is call($tok, path => '/tokens/x')->{status}, 401, 'a revoked token is still refused';
    is call($dead)->{status}, 401, 'a revoked key is still refused';
    is $t->redis(r1 => 'HGET', 'gate:tok:' . sha256_hex($tok2), 'sub'), 'user-2',
        'the token record is back in Redis';
};

subtest 'last_used_at is kept without a write per request' => sub {
    my ($row) = $pg->sql("SELECT last_used_at IS NOT NULL FROM api_keys WHERE id = :'id'", id => $key_id);
    is $row->[0], 't', 'set after use';
    like ctl(qw(key list acme))->{out}, qr/^\Q$key_id\E\s+\S+\s+\S+ \S+\s+\d{4}-\d\d-\d\d \d\d:\d\d\s+active$/m,
        'key list shows when it was last used';
    $pg->sql("UPDATE api_keys SET last_used_at = now() - interval '1 hour' WHERE id = :'id'", id => $key_id);
    call($key) for 1 .. 20;
    ($row) = $pg->sql("SELECT last_used_at < now() - interval '30 minutes' FROM api_keys WHERE id = :'id'",
                      id => $key_id);
    is $row->[0], 't', 'twenty cached uses within the minute wrote nothing';
};

subtest 'PostgreSQL itself refuses a slug shaped like a tenant id' => sub {
    for my $slug ($acme_id, 'ab-') {
        # psql's own complaint is the expected outcome: keep it off the output
        open my $saved, '>&', \*STDERR or die;
        open STDERR, '>', '/dev/null' or die;
        my $ok = eval {
            $pg->sql(q{INSERT INTO tenants (id, slug, name) VALUES (gen_random_uuid(), :'slug', 'x')},
                     slug => $slug);
            1;
        };
        open STDERR, '>&', $saved or die;
        ok !$ok, "slug \"$slug\" refused by the tenants_slug_shape check";
    }
};

subtest 'gatectl refuses bad input with a clear line' => sub {
    my @cases = (
        [ [qw(tenant create --slug acme --name Again)], qr/already exists/ ],
        [ [qw(tenant create --slug), "Robert'); DROP TABLE tenants;--", '--name', 'x'], qr/invalid slug/ ],
        [ [qw(tenant create --slug UPPER --name x)], qr/invalid slug/ ],
        [ [qw(tenant create --slug a --name x)], qr/invalid slug/ ],
        [ [qw(tenant create --slug ab- --name x)], qr/invalid slug/ ],
        [ [ 'tenant', 'create', '--slug', $acme_id, '--name', 'x' ], qr/invalid slug/ ],
        [ [qw(tenant create --name x)], qr/--slug is required/ ],
        [ [qw(tenant disable nosuch)], qr/no tenant "nosuch"/ ],
        [ [qw(key create nosuch)], qr/no tenant "nosuch"/ ],
        [ [qw(key revoke not-a-uuid)], qr/invalid key id/ ],
        [ [qw(key revoke 00000000-0000-4000-8000-000000000000)], qr/no key/ ],
        [ [qw(key rotate 00000000-0000-4000-8000-000000000000)], qr/no key/ ],
        [ [qw(token create acme --subject u --ttl forever)], qr/invalid ttl/ ],
        [ [qw(token create acme --subject u --scope), 'a"b'], qr/invalid scope/ ],
        [ [qw(frobnicate)], qr/usage/ ],
    );
    for my $case (@cases) {
        my ($args, $msg) = @$case;
        my $r = ctl(@$args);
        isnt $r->{rc}, 0, "gatectl @$args: non-zero exit";
        like $r->{err}, $msg, "gatectl @$args: says why";
    }

    my $name = "Bobby'); DROP TABLE tenants;-- \xe2\x98\xba";    # UTF-8 bytes
    my $r = ctl(qw(tenant create --slug bobby --name), $name);
    is $r->{rc}, 0, 'an injection-shaped name is accepted as data';
    my ($row) = $pg->sql("SELECT name FROM tenants WHERE slug = 'bobby'");
    is $row->[0], $name, '... and stored literally';
    ok $pg->sql('SELECT count(*) FROM tenants'), 'the tenants table is still there';
};

$t->finish;
$pg->finish;
done_testing;
