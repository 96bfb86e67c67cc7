# When Redis dies, stalls or comes back: a clean JSON 503 within the
# configured timeout, other locations keep working, and Gate reconnects by
# itself without a reload.

use strict;
use warnings;

use Test::More;
use POSIX ();
use Time::HiRes qw(time sleep);
use Gate::Test;
use Gate::Token qw(store_token);

my $t = Gate::Test->new;
$t->start_redis(name => 'r1');
$t->start_upstream('APP');

# The cache stays out of this file: every request must ask Redis.
$t->nginx_conf(<<'EOF');
%%GLOBALS%%
http {
    %%HTTP_GLOBALS%%
    gate_redis 127.0.0.1:%%REDIS_PORT_r1%% connect_timeout=100ms timeout=300ms;

    server {
        listen 127.0.0.1:%%PORT_HTTP%%;

        location /api/ {
            gate_auth token;
            proxy_pass http://127.0.0.1:%%PORT_APP%%;
        }

        location /static/ {
            return 200 "still here\n";
        }
    }
}
EOF
$t->start_nginx;

# Redis logs its own shutdown; nginx logs each lost connection as an error.
$t->allow_log(qr/gate redis/);

my $tenant = '6f1d3c1e-8f0a-4a55-9d1e-2b7c9e0a1111';
my $token = store_token($t, 'r1', tenant => $tenant, sub => 'u', scope => 'read');
my @auth = (headers => [ Authorization => "Bearer $token" ]);

is $t->request(GET => '/api/x', @auth)->{status}, 200, 'with Redis up the token works';

subtest 'Redis stopped' => sub {
    my $port = $t->redis_port('r1');
    $t->stop_redis('r1');

    my $r = $t->request(GET => '/api/x', @auth);
    is $r->{status}, 503, 'a token check answers 503';
    is $r->{json}{error}{code}, 'unavailable', 'JSON error "unavailable"';
    cmp_ok $r->{elapsed}, '<', 1.0, 'within the timeout, not hung';

    for (1 .. 5) {
        $r = $t->request(GET => '/api/x', @auth);
        is $r->{status}, 503, "request $_ while Redis is down: 503" if $_ == 5;
    }

    $r = $t->request(GET => '/static/x');
    is $r->{status}, 200, 'a location without gate_auth keeps serving';

    $t->start_redis(name => 'r1');
    is $t->redis_port('r1'), $port, 'Redis restarted on the same port';
    $token = store_token($t, 'r1', tenant => $tenant, sub => 'u', scope => 'read');
    @auth = (headers => [ Authorization => "Bearer $token" ]);

    my $t0 = time;
    ok $t->wait_for(sub { $t->request(GET => '/api/x', @auth)->{status} == 200 }, timeout => 5),
        'Gate reconnects by itself, no reload';
    diag sprintf 'recovered %.2fs after Redis came back', time - $t0;
};

subtest 'Redis that accepts but never answers' => sub {
    is $t->request(GET => '/api/x', @auth)->{status}, 200, 'working before the stall';
    $t->pause_redis('r1');

    my @elapsed;
    for (1 .. 3) {
        my $r = $t->request(GET => '/api/x', @auth, timeout => 5);
        is $r->{status}, 503, "stalled Redis, request $_: 503";
        is $r->{json}{error}{code}, 'unavailable', "stalled Redis, request $_: unavailable";
        push @elapsed, $r->{elapsed};
    }
    cmp_ok $_, '<', 1.0, 'answered within the 300ms timeout (plus slack)' for @elapsed;
    is $t->request(GET => '/static/x')->{status}, 200, 'other locations unaffected';

    $t->resume_redis('r1');
    ok $t->wait_for(sub { $t->request(GET => '/api/x', @auth)->{status} == 200 }, timeout => 5),
        'recovers when Redis answers again';
};

subtest 'many requests waiting when Redis stalls all get an answer' => sub {
    $t->pause_redis('r1');
    my @kids;
    for my $i (1 .. 20) {
        my $pid = fork // die;
        if ($pid == 0) {
            my $r = $t->request(GET => '/api/x', @auth, timeout => 5);
            POSIX::_exit($r->{status} == 503 ? 0 : 1);
        }
        push @kids, $pid;
    }
    my $bad = 0;
    for (@kids) { waitpid $_, 0; $bad++ if $? != 0 }
    is $bad, 0, '20 concurrent requests: every one got a 503';
    $t->resume_redis('r1');
    ok $t->wait_for(sub { $t->request(GET => '/api/x', @auth)->{status} == 200 }, timeout => 5),
        'and service comes back';
};

$t->finish;
done_testing;
