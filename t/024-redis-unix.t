# gate_redis over a unix socket: lookups and gate:invalidate work the same.

use strict;
use warnings;

use Test::More;
use Gate::Test;
use Gate::Token qw(store_token);

my $t = Gate::Test->new;
my $sock = $t->dir . '/redis.sock';
$t->start_redis(name => 'r1', args => [ '--unixsocket', $sock, '--unixsocketperm', '777' ]);
$t->start_upstream('APP');

(my $conf = <<'EOF') =~ s/%%SOCK%%/$sock/;
%%GLOBALS%%
http {
    %%HTTP_GLOBALS%%
    gate_redis unix:%%SOCK%%;
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
$t->start_nginx(conf => $conf);

my ($token, $hash) = store_token($t, 'r1', tenant => '6f1d3c1e-8f0a-4a55-9d1e-2b7c9e0a1111',
                                 sub => 'u', scope => 'read');
my @auth = (headers => [ Authorization => "Bearer $token" ]);

ok $t->wait_for(sub { $t->request(GET => '/api/x', @auth)->{status} == 200 }, timeout => 3),
    'a token is found through the unix socket';
is $t->request(GET => '/api/x', @auth)->{status}, 200, 'and again (cached)';
$t->redis(r1 => 'DEL', "gate:tok:$hash");
$t->redis(r1 => 'PUBLISH', 'gate:invalidate', $hash);
ok $t->wait_for(sub { $t->request(GET => '/api/x', @auth)->{status} == 401 }, timeout => 1),
    'the subscription over the socket hears the invalidation';
unlike $t->error_log('n1'), qr/gate redis: .*(lost|failed)/, 'no connection trouble logged';

$t->finish;
done_testing;
