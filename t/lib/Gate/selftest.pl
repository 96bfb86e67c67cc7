#!/usr/bin/perl
# Self-test of the harness itself, without the Gate module (prove runs only
# t/*.t, so this runs by hand):  cd /work/main && perl -It/lib t/lib/Gate/selftest.pl

use strict;
use warnings;

use Test::More;
use Gate::Test;

my $t = Gate::Test->new(no_module => 1);
ok -d $t->dir, 'temp dir exists';
isnt $t->port('A'), $t->port('B'), 'named ports differ';
is $t->port('A'), $t->port('A'), 'a named port is remembered';
is $t->port('HTTP'), $t->http_port('n1'), 'PORT_HTTP is the n1 instance port';

# --- redis -------------------------------------------------------------------

my $redis_port = $t->start_redis(name => 'r1');
is $t->redis_port('r1'), $redis_port, 'redis port remembered';
is $t->redis(r1 => 'SET', 'k', "bin\r\nary"), 'OK', 'SET';
is $t->redis(r1 => 'GET', 'k'), "bin\r\nary", 'GET round-trips a bulk with CRLF';
is $t->redis(r1 => 'GET', 'missing'), undef, 'nil is undef';
is $t->redis(r1 => 'HSET', 'h', 'a', 1, 'b', 2), 2, 'HSET returns an integer';
is_deeply { @{ $t->redis(r1 => 'HGETALL', 'h') } }, { a => 1, b => 2 }, 'HGETALL';
is_deeply $t->redis(r1 => 'EVAL', 'return {1, {"x", false}, redis.call("GET", "k")}', 0),
          [ 1, [ 'x', undef ], "bin\r\nary" ], 'nested arrays';
like $t->redis(r1 => 'NOSUCHCOMMAND')->{error}, qr/^ERR/, 'errors are { error => ... }';

{
    local $t->{redis_timeout} = 0.3;
    $t->pause_redis('r1');
    ok !eval { $t->redis(r1 => 'PING'); 1 }, 'a paused redis times out';
    like $@, qr/timeout/, '... with a timeout error';
    $t->resume_redis('r1');
}
is $t->redis(r1 => 'PING'), 'PONG', 'resumed redis answers';

# --- nginx and an upstream ---------------------------------------------------

my $app = $t->start_upstream('APP');
my $chunky = $t->start_upstream('CHUNKY', respond => sub {
    return (200, ['Transfer-Encoding' => 'chunked'], "5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n");
});

$t->nginx_conf(<<'EOF');
%%GLOBALS%%
http {
    %%HTTP_GLOBALS%%
    upstream app { server 127.0.0.1:%%PORT_APP%%; keepalive 4; }
    server {
        listen 127.0.0.1:%%PORT_HTTP%%;
        location = / { return 200 "hello from %%TESTDIR%%\n"; }
        location = /json { default_type application/json; return 200 '{"ok":true}'; }
        location /app/ {
            proxy_pass http://app;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header X-Gate-Test yes;
        }
        location /chunky { proxy_pass http://127.0.0.1:%%PORT_CHUNKY%%; proxy_http_version 1.1; }
        location = /twice { add_header X-Twice a; add_header X-Twice b; return 204; }
    }
}
EOF
is $t->start_nginx, $t->http_port, 'nginx n1 started';

my $r = $t->request(GET => '/');
is $r->{status}, 200, 'plain return 200';
is $r->{body}, "hello from " . $t->dir . "/n1\n", '%%TESTDIR%% is the instance dir';
ok $r->{elapsed} > 0, 'elapsed measured';

is_deeply $t->request(GET => '/json')->{json}, { ok => JSON::PP::true() }, 'json decoded';
is_deeply $t->request(GET => '/twice')->{headers}{'x-twice'}, [ 'a', 'b' ], 'repeated headers become arrayrefs';

$r = $t->request(POST => '/app/x?y=1', headers => [ 'X-Custom' => 'one', 'X-Custom' => 'two' ],
                 json => { hello => "w\x{f6}rld" });
is $r->{status}, 200, 'proxied to the upstream';
is $r->{json}{uri}, '/app/x?y=1', 'upstream saw the uri';
is $r->{json}{method}, 'POST', 'upstream saw the method';
is $r->{json}{headers}{'x-gate-test'}, 'yes', 'upstream saw the header nginx added';
is $r->{json}{headers}{'x-custom'}, 'one, two', 'repeated request headers arrive joined';
is_deeply(JSON::PP->new->decode($r->{json}{body}), { hello => "w\x{f6}rld" }, "upstream saw the JSON body");

$t->request(GET => '/app/again') for 1 .. 3;
my @seen = $app->requests;
is scalar @seen, 4, 'upstream logged every request';
is $seen[-1]{uri}, '/app/again', 'log is in order';

$r = $t->request(GET => '/chunky');
is $r->{headers}{'transfer-encoding'}, 'chunked', 'chunked response';
is $r->{body}, 'hello world', 'chunked body decoded';

$r = $t->request(GET => '/', raw => "GET / HTTP/1.0\r\n\r\n");
is $r->{status}, 200, 'raw request';

$r = $t->request(GET => '/', raw => "GET / HTTP/1.1\r\nHost: x\r\n\r\n", timeout => 0.5);
is $r->{status}, 200, 'a keep-alive raw request returns its complete response at the timeout';

$r = $t->request(GET => '/', port => $t->port('NOBODY'));
is $r->{status}, 0, 'connection refused is status 0';
like $r->{error}, qr/connect/, '... with an error';

ok $t->reload_nginx, 'reload changed the workers';
is $t->request(GET => '/')->{status}, 200, 'serves after reload';

# --- a second instance and config tests --------------------------------------

$ENV{GATE_SELFTEST} = 'env';
$t->start_nginx(name => 'n2', conf => <<'EOF');
%%GLOBALS%%
http {
    %%HTTP_GLOBALS%%
    server {
        listen 127.0.0.1:%%PORT_HTTP%%;
        location / { return 200 "n2 %%ENV_GATE_SELFTEST%% %%REDIS_PORT_r1%% %%PORT_HTTP_n1%%"; }
    }
}
EOF
isnt $t->http_port('n2'), $t->http_port('n1'), 'instances get their own ports';
is $t->request(GET => '/', node => 'n2')->{body}, "n2 env $redis_port " . $t->http_port('n1'),
   'second instance, env and cross-instance placeholders';

my ($rc, $out) = $t->nginx_test_config(<<'EOF');
%%GLOBALS%%
http { %%HTTP_GLOBALS%% server { listen 127.0.0.1:%%PORT_HTTP%%; no_such_directive on; } }
EOF
isnt $rc, 0, 'nginx -t fails on a bad config';
like $out, qr/unknown directive "no_such_directive"/, '... and says why';

($rc, $out) = $t->nginx_test_config("%%GLOBALS%%\nhttp { %%HTTP_GLOBALS%% }\n");
is $rc, 0, 'nginx -t passes on a good config' or diag $out;

ok $t->wait_for(sub { 1 }), 'wait_for true';
ok !$t->wait_for(sub { 0 }, timeout => 0.1), 'wait_for times out';

ok $t->stop_nginx('n2') < 5, 'stop_nginx returns the seconds it took';

my @pids = (map({ $_->{pid} } values %{ $t->{redis} }), $app->pid, $chunky->pid);
my $master = $t->{nginx}{n1}{pid};
my $dir = $t->dir;
$t->finish;
ok !(grep { kill 0, $_ } @pids, $master), 'no child survives finish';
ok !-d $dir, 'temp dir removed';

done_testing;
