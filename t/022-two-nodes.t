# Two nginx nodes (separate shared-memory caches) on one Redis: a token
# revoked through gate:invalidate is refused on both within 100 ms, even
# though both had it cached.

use strict;
use warnings;

use Test::More;
use Time::HiRes qw(time sleep);
use Gate::Test;
use Gate::Token qw(store_token);

my $t = Gate::Test->new;
$t->start_redis(name => 'r1');
$t->start_upstream('APP');

my $conf = <<'EOF';
%%GLOBALS%%
http {
    %%HTTP_GLOBALS%%
    gate_redis 127.0.0.1:%%REDIS_PORT_r1%%;
    gate_cache zone=gate:1m ttl=60s;

    server {
        listen 127.0.0.1:%%PORT_HTTP%%;

        location /api/ {
            gate_auth token;
            proxy_pass http://127.0.0.1:%%PORT_APP%%;
        }
    }
}
EOF
$t->start_nginx(name => 'n1', conf => $conf);
$t->start_nginx(name => 'n2', conf => $conf);

my $tenant = '6f1d3c1e-8f0a-4a55-9d1e-2b7c9e0a1111';

sub status {
    my ($node, $token) = @_;
    return $t->request(GET => '/api/x', node => $node,
                       headers => [ Authorization => "Bearer $token" ])->{status};
}

sub hmget_calls {
    my $info = $t->redis(r1 => 'INFO', 'commandstats');
    return $info =~ /cmdstat_hmget:calls=(\d+)/ ? $1 : 0;
}

# Measures how long after the publish a node refuses the token.
sub refused_after {
    my ($node, $token, $since) = @_;
    my $deadline = $since + 2;
    while (time < $deadline) {
        return time - $since if status($node, $token) == 401;
        sleep 0.002;
    }
    return undef;
}

# A fresh worker (much slower under valgrind) answers 503 until its Redis
# connection is up: wait for both nodes to serve before measuring anything.
{
    my ($warm) = store_token($t, 'r1', tenant => $tenant, sub => 'warm-up', scope => 'read');
    for my $node (qw(n1 n2)) {
        ok $t->wait_for(sub { status($node, $warm) == 200 }, timeout => 30),
            "$node serves tokens once its Redis connection is up";
    }
}

for my $round (1 .. 3) {
    my ($token, $hash) = store_token($t, 'r1', tenant => $tenant, sub => "u$round", scope => 'read');

    # each worker of each node has seen it at least once
    for my $node (qw(n1 n2)) {
        is status($node, $token), 200, "round $round: $node accepts the token" for 1 .. 4;
    }
    my $calls = hmget_calls();
    status($_, $token) for qw(n1 n2 n1 n2);
    is hmget_calls(), $calls, "round $round: both nodes answer from their caches";

    # revoke the way the token API will: remove the record, then publish
    $t->redis(r1 => 'DEL', "gate:tok:$hash");
    my $t0 = time;
    $t->redis(r1 => 'PUBLISH', 'gate:invalidate', $hash);

    my $n2 = refused_after('n2', $token, $t0);
    my $n1 = refused_after('n1', $token, $t0);
    ok defined $n2 && $n2 < 0.1, "round $round: n2 refuses the revoked token within 100 ms";
    ok defined $n1 && $n1 < 0.1, "round $round: n1 refuses the revoked token within 100 ms";
    diag sprintf 'round %d: refused on n2 after %.1f ms, on n1 after %.1f ms',
        $round, 1000 * ($n2 // 9), 1000 * ($n1 // 9);

    is status('n1', $token), 401, "round $round: and stays refused on n1";
    is status('n2', $token), 401, "round $round: and stays refused on n2";
}

$t->finish;
done_testing;
