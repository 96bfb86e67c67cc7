# "nginx -s reload" while traffic flows: no request is lost or answered
# with an error, and the new workers talk to Redis at once.

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

# Deadlines are not what this file tests: generous ones keep a new worker,
# slow to start under valgrind, from turning a reload into a 503.
$t->nginx_conf(<<'EOF');
%%GLOBALS%%
http {
    %%HTTP_GLOBALS%%
    gate_redis 127.0.0.1:%%REDIS_PORT_r1%% connect_timeout=1s timeout=2s;
    gate_cache zone=gate:1m ttl=1s;

    server {
        listen 127.0.0.1:%%PORT_HTTP%%;

        location /api/ {
            gate_auth token;
            proxy_pass http://127.0.0.1:%%PORT_APP%%;
        }
    }
}
EOF
$t->start_nginx;

my $token = store_token($t, 'r1', tenant => '6f1d3c1e-8f0a-4a55-9d1e-2b7c9e0a1111',
                        sub => 'u', scope => 'read');
my $unknown = Gate::Token::new_secret('gat_live_');

# Two clients: one with a valid token, one with an unknown one (every request
# of the second goes to Redis, the cache holds it only 1s).
my $results = $t->dir . '/results';
my @kids;
for my $which ([ valid => $token, 200 ], [ unknown => $unknown, 401 ]) {
    my ($name, $tok, $want) = @$which;
    my $pid = fork // die;
    if ($pid == 0) {
        my ($n, $bad, $last) = (0, 0, '');
        my $until = time + 4;
        while (time < $until) {
            my $r = $t->request(GET => '/api/x', headers => [ Authorization => "Bearer $tok" ]);
            $n++;
            if ($r->{status} != $want) { $bad++; $last = "$r->{status} $r->{body}" }
        }
        open my $fh, '>', "$results.$name" or die;
        print $fh "$n $bad $last\n";
        close $fh;
        POSIX::_exit(0);
    }
    push @kids, $pid;
}

sleep 0.5;
ok $t->reload_nginx('n1'), 'first reload under traffic';
sleep 1;
ok $t->reload_nginx('n1'), 'second reload under traffic';
waitpid $_, 0 for @kids;

for my $name (qw(valid unknown)) {
    my $line = do { local (@ARGV, $/) = ("$results.$name"); <> } // '';
    my ($n, $bad, $last) = $line =~ /^(\d+) (\d+) ?(.*)$/;
    cmp_ok $n // 0, '>', 50, "$name-token client made requests throughout ($n)";
    is $bad, 0, "$name-token client: every answer was the expected one" or diag "last wrong: $last";
}

is $t->request(GET => '/api/x', headers => [ Authorization => "Bearer $token" ])->{status}, 200,
    'after the reloads the token still works';

$t->finish;
done_testing;
