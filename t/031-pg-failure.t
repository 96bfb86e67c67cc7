# PostgreSQL stopped, slow or saturated: keys already cached keep working,
# anything that needs PostgreSQL gets a JSON 503 within the timeout, never a
# hang, and the pool recovers by itself when PostgreSQL is back.

use strict;
use warnings;

use Test::More;
use POSIX ();
use Time::HiRes qw(time sleep);
use Gate::Test;
use Gate::Store;

my $t = Gate::Test->new;
$t->start_redis(name => 'r1');
$t->start_upstream('APP');
my $pg = Gate::Store->new($t, private => 1);

(my $conf = <<'EOF') =~ s/%%CONNINFO%%/$pg->conninfo/e;
%%GLOBALS%%
http {
    %%HTTP_GLOBALS%%
    gate_redis 127.0.0.1:%%REDIS_PORT_r1%%;
    gate_postgres "%%CONNINFO%%" pool=2 timeout=500ms;
    gate_cache zone=gate:1m ttl=60s;

    server {
        listen 127.0.0.1:%%PORT_HTTP%%;

        location /v1/ {
            gate_auth secret_key;
            proxy_pass http://127.0.0.1:%%PORT_APP%%;
        }
    }
}
EOF
$t->start_nginx(conf => $conf);
$t->allow_log(qr/gate postgres/);

sub new_key {
    my ($out) = $pg->gatectl(qw(key create acme))->{out};
    return $out =~ /^key:\s+(\S+)$/m ? $1 : die 'no key';
}

sub call { $t->request(GET => '/v1/x', headers => [ Authorization => "Bearer $_[0]" ], timeout => 10) }

is $pg->gatectl(qw(tenant create --slug acme --name Acme))->{rc}, 0, 'tenant created';
my $used = new_key();
my @unused = map { new_key() } 1 .. 8;
is call($used)->{status}, 200, 'a key in use (now in the cache and in Redis)';

subtest 'PostgreSQL stopped' => sub {
    $pg->stop;

    is call($used)->{status}, 200, 'the cached key still works';
    my $r = call($unused[0]);
    is $r->{status}, 503, 'an uncached key needs PostgreSQL: 503';
    is $r->{json}{error}{code}, 'unavailable', '... "unavailable"';
    cmp_ok $r->{elapsed}, '<', 1.5, '... within the timeout';

    $pg->start;
    ok $t->wait_for(sub { call($unused[0])->{status} == 200 }, timeout => 6),
        'after PostgreSQL restarts the pool reconnects by itself, no reload';
};

subtest 'a pool exhausted by slow queries answers 503, not a hang' => sub {
    # hold a lock every key lookup needs, from a session of our own
    pipe(my $rd, my $wr) or die;
    my $pid = fork // die;
    if ($pid == 0) {
        close $wr;
        open STDIN, '<&', $rd or die;
        open STDOUT, '>', '/dev/null';
        exec('psql', '-X', '-q', '-h', $pg->host, '-p', $pg->port, '-U', 'postgres', '-d', 'gate')
            or POSIX::_exit(127);
    }
    close $rd;
    syswrite $wr, "BEGIN; LOCK TABLE api_keys IN ACCESS EXCLUSIVE MODE;\n";
    sleep 0.5;

    my $t0 = time;
    my @kids;
    for my $k (@unused[1 .. 6]) {
        my $kid = fork // die;
        if ($kid == 0) {
            my $r = call($k);
            POSIX::_exit($r->{status} == 503 && $r->{elapsed} < 2.5 ? 0 : 1);
        }
        push @kids, $kid;
    }
    my $bad = 0;
    for (@kids) { waitpid $_, 0; $bad++ if $? }
    is $bad, 0, 'six concurrent lookups on a pool of two: each a 503 within the deadline';
    cmp_ok time - $t0, '<', 3, 'all answered in about the timeout, not queued forever';
    is call($used)->{status}, 200, 'cached keys kept working meanwhile';

    syswrite $wr, "ROLLBACK;\n\\q\n";
    close $wr;
    waitpid $pid, 0;

    ok $t->wait_for(sub { call($unused[7])->{status} == 200 }, timeout => 6),
        'when the lock goes, lookups work again';
};

$t->finish;
$pg->finish;
done_testing;
