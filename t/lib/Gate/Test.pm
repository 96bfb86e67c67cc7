package Gate::Test;

# The harness for Gate's tests: one object per test file owns a temp dir, free
# loopback ports, private redis-server and nginx processes, a raw HTTP/1.1
# client and a raw RESP client.  finish() adds nginx-tests' end-of-file checks:
# no [alert]/[emerg]/[crit] in error.log, no sanitizer reports, a prompt exit
# on QUIT and, under GATE_TEST_VALGRIND=1, a clean valgrind report.
#
#   my $t = Gate::Test->new;
#   $t->start_redis(name => 'r1');
#   $t->nginx_conf(<<'EOF');
#   %%GLOBALS%%
#   http {
#       %%HTTP_GLOBALS%%
#       server { listen 127.0.0.1:%%PORT_HTTP%%; location / { return 200; } }
#   }
#   EOF
#   $t->start_nginx;
#   is $t->request(GET => '/')->{status}, 200;
#   $t->finish;
#   done_testing;

use strict;
use warnings;

use Carp qw(croak);
use Cwd qw(abs_path);
use File::Path qw(make_path remove_tree);
use File::Temp qw(tempdir);
use IO::Select;
use IO::Socket::INET;
use JSON::PP ();
use POSIX qw(WNOHANG);
use Test::More ();
use Test2::API ();
use Time::HiRes qw(sleep time);

use Gate::Upstream;

my $NGINX    = '/usr/sbin/nginx';
my $VALGRIND = $ENV{GATE_TEST_VALGRIND} ? 1 : 0;
my $SLOW     = $VALGRIND ? 10 : 1;    # every nginx deadline stretches under valgrind
my $JSON     = JSON::PP->new->utf8->canonical;

my @LIVE;    # harnesses not yet finished, so END can clean up after a die

# --- construction ----------------------------------------------------------

sub new {
    my ($class, %opts) = @_;
    my $self = bless {
        workers       => $opts{workers}       // 2,
        no_module     => $opts{no_module}     // 0,
        redis_timeout => $opts{redis_timeout} // 5,
        root          => $ENV{GATE_ROOT}      // _repo_root(),
        owner         => $$,
        ports         => {},    # name => port
        port_taken    => {},    # port => name
        redis         => {},    # name => { pid, port, dir }
        nginx         => {},    # name => { pid, dir, stops => [...] }
        nginx_order   => [],
        upstreams     => {},    # name => Gate::Upstream
        allowed_log   => [],
    }, $class;

    unless ($self->{no_module}) {
        my $so = $ENV{GATE_TEST_MODULE}
            // "$self->{root}/.cache/nginx-build/objs/ngx_http_gate_module.so";
        Test::More::BAIL_OUT("Gate module not found at $so: run scripts/build first (or set GATE_TEST_MODULE)")
            unless -f $so;
        $self->{module} = abs_path($so);
    }

    $self->{dir} = tempdir('gate-test-XXXX', DIR => '/tmp', CLEANUP => 0);
    push @LIVE, $self;
    _exit_cleanly_on_signals();
    return $self;
}

sub dir  { $_[0]{dir} }
sub root { $_[0]{root} }

sub _repo_root {
    (my $root = abs_path(__FILE__)) =~ s{/t/lib/Gate/[^/]+$}{};
    return $root;
}

# END blocks do not run when a signal kills the process; exiting from a
# handler makes them run, so a Ctrl-C or a prove timeout still stops children.
sub _exit_cleanly_on_signals {
    # a reader that went away (prove | head) must not leave servers behind
    $SIG{PIPE} = 'IGNORE';

    for my $sig (qw(INT TERM HUP)) {
        next if ref $SIG{$sig} || ($SIG{$sig} // '') eq 'IGNORE';
        $SIG{$sig} = sub { Test::More::diag("Gate::Test: caught SIG$sig"); exit 1 };
    }
}

# --- ports and files --------------------------------------------------------

sub port {
    my ($self, $name) = @_;
    $name = 'HTTP_n1' if $name eq 'HTTP';    # the default instance's port
    return $self->{ports}{$name} //= $self->_free_port($name);
}

sub _free_port {
    my ($self, $name) = @_;
    for (1 .. 100) {
        my $sock = IO::Socket::INET->new(LocalAddr => '127.0.0.1', LocalPort => 0, Proto => 'tcp')
            or croak "cannot bind a loopback port: $@";
        my $port = $sock->sockport;
        close $sock;
        next if $self->{port_taken}{$port};
        $self->{port_taken}{$port} = $name;
        return $port;
    }
    croak "no free port for $name";
}

sub http_port {
    my ($self, $name) = @_;
    return $self->port('HTTP_' . ($name // 'n1'));
}

sub write_file {
    my ($self, $name, $content) = @_;
    my $path = $name =~ m{^/} ? $name : "$self->{dir}/$name";
    (my $parent = $path) =~ s{/[^/]*$}{};
    make_path($parent);
    open my $fh, '>', $path or croak "cannot write $path: $!";
    print {$fh} $content;
    close $fh or croak "cannot write $path: $!";
    return $path;
}

sub _read_file {
    my ($path) = @_;
    open my $fh, '<', $path or return '';
    local $/;
    return scalar <$fh>;
}

sub wait_for {
    my ($self, $cond, %opts) = @_;
    my $deadline = time + ($opts{timeout} // 5);
    my $interval = $opts{interval} // 0.02;
    while (1) {
        my $result = $cond->();
        return $result if $result;
        return 0 if time >= $deadline;
        sleep $interval;
    }
}

# --- nginx configuration ----------------------------------------------------

sub nginx_conf {
    my ($self, $text) = @_;
    $self->{conf} = $text;
}

# Expands a config template for one nginx instance.  %%TESTDIR%% is the
# instance's own dir, so two instances never share a pid file or error.log.
sub _expand {
    my ($self, $text, $instance, $dir) = @_;
    $text =~ s/%%GLOBALS%%/$self->_globals/ge;
    $text =~ s/%%HTTP_GLOBALS%%/$self->_http_globals/ge;
    $text =~ s/%%TESTDIR%%/$dir/g;
    $text =~ s/%%SHAREDDIR%%/$self->{dir}/g;
    $text =~ s{%%MODULE%%}{$self->{module} // croak 'no %%MODULE%% with no_module => 1'}ge;
    $text =~ s/%%PORT_HTTP%%/$self->http_port($instance)/ge;
    $text =~ s/%%PORT_(\w+)%%/$self->port($1)/ge;
    $text =~ s/%%REDIS_PORT_(\w+)%%/$self->redis_port($1)/ge;
    $text =~ s{%%ENV_(\w+)%%}{$ENV{$1} // croak "%%ENV_$1%%: \$ENV{$1} is not set"}ge;
    croak "unknown placeholder $1 in nginx config" if $text =~ /(%%\w+%%)/;
    $text = _stretch_deadlines($text) if $VALGRIND;
    return $text;
}

# Under valgrind a worker's first commands take far longer than Gate's
# default deadlines (100 ms to connect to Redis, 200 ms a command): where a
# test leaves them at their defaults, they are stretched.  Deadlines a test
# sets itself, to test them, stay as written.
sub _stretch_deadlines {
    my ($text) = @_;
    $text =~ s{^(\s*gate_redis\s+[^;]*?)\s*;}{
        my $d = $1;
        $d .= ' connect_timeout=2s' unless $d =~ /connect_timeout=/;
        $d .= ' timeout=2s' unless $d =~ /(?<!connect_)timeout=/;
        "$d;"
    }gme;
    return $text;
}

sub _globals {
    my ($self) = @_;
    # Under valgrind one worker is enough, and the master stays so that a
    # reload is a real reload (valgrind follows the forked worker; each
    # process writes its own valgrind.PID.log).
    my ($master, $workers) = $VALGRIND ? ('on', 1) : ('on', $self->{workers});
    return join "\n",
        ($self->{no_module} ? () : 'load_module %%MODULE%%;'),
        'daemon off;',
        "master_process $master;",
        "worker_processes $workers;",
        'error_log %%TESTDIR%%/error.log debug;',
        'pid %%TESTDIR%%/nginx.pid;',
        ($> == 0 ? 'user root;' : ()),    # workers must read the temp dir
        'events { worker_connections 1024; }',
        '';
}

# Temp paths inside the test dir, so nginx running as root never touches
# /var/lib/nginx or /var/log/nginx.
sub _http_globals {
    return join "\n",
        (map { "${_}_temp_path %%TESTDIR%%/${_}_temp;" } qw(client_body proxy fastcgi uwsgi scgi)),
        'access_log %%TESTDIR%%/access.log;',
        '';
}

sub nginx_test_config {
    my ($self, $text) = @_;
    my $dir = "$self->{dir}/conftest-" . ++$self->{conftests};
    make_path($dir);
    my $conf = $self->write_file("$dir/nginx.conf", $self->_expand($text, 'conftest', $dir));
    my $output = _capture($NGINX, '-t', '-p', "$dir/", '-c', $conf, '-e', "$dir/test-error.log");
    return ($? >> 8, $output);
}

# Runs a command and returns its stdout and stderr together.
sub _capture {
    my @cmd = @_;
    my $pid = open(my $fh, '-|') // croak "fork: $!";
    if ($pid == 0) {
        open STDERR, '>&', \*STDOUT;
        exec @cmd or POSIX::_exit(127);
    }
    local $/;
    my $output = <$fh> // '';
    close $fh;
    return $output;
}

# --- nginx processes --------------------------------------------------------

sub start_nginx {
    my ($self, %opts) = @_;
    my $name = $opts{name} // 'n1';
    my $conf = $opts{conf} // $self->{conf} // croak 'start_nginx: call nginx_conf() first or pass conf';
    my $inst = $self->{nginx}{$name} //= do {
        push @{ $self->{nginx_order} }, $name;
        { name => $name, dir => "$self->{dir}/$name", stops => [] };
    };
    croak "nginx $name is already running" if $inst->{pid};
    $inst->{conf} = $conf;

    my $dir = $inst->{dir};
    make_path($dir);
    unlink "$dir/nginx.pid";
    $self->write_file("$dir/nginx.conf", $self->_expand($conf, $name, $dir));

    my @cmd = ($NGINX, '-p', "$dir/", '-c', "$dir/nginx.conf", '-e', "$dir/error.log");
    unshift @cmd, $self->_valgrind_command($dir) if $VALGRIND;
    $inst->{pid} = _spawn(\@cmd, "$dir/stderr.log");

    # Only wait for the port when the config listens on it.
    my $port = $conf =~ /%%PORT_HTTP%%/ ? $self->http_port($name) : undef;
    my $ready = sub { -s "$dir/nginx.pid" && (!$port || _port_open($port)) };
    $self->wait_for(sub { !$self->_nginx_alive($inst) || $ready->() },    # stop early if it died
                    timeout => 10 * $SLOW, interval => 0.05);

    unless ($self->_nginx_alive($inst) && $ready->()) {
        Test::More::BAIL_OUT("nginx $name did not start\n"
            . "--- error.log:\n" . _tail("$dir/error.log", 30)
            . "--- stderr:\n" . _tail("$dir/stderr.log", 30));
    }

    # Under valgrind a new worker needs seconds, not milliseconds, to open
    # and prepare its Redis and PostgreSQL connections, longer than the
    # deadlines the tests configure; its first requests would measure
    # valgrind, not Gate.  Let it settle (its retries come within 2 s).
    sleep 3 if $VALGRIND && !$self->{no_module};

    return $port;
}

sub _valgrind_command {
    my ($self, $dir) = @_;
    my $supp = "$self->{root}/t/valgrind.supp";
    # Only definite leaks count as errors: nginx frees its pools wholesale, so
    # "possibly lost" blocks (interior pointers into pools) are noise.
    return ('valgrind', '--tool=memcheck', '--keep-debuginfo=yes', '--leak-check=full', '--show-leak-kinds=definite', '--num-callers=40',
            '--errors-for-leak-kinds=definite', '--error-exitcode=99', "--log-file=$dir/valgrind.%p.log",
            (-f $supp ? "--suppressions=$supp" : ()));
}

# Reaps the master if it has exited, recording how; true while it runs.
sub _nginx_alive {
    my ($self, $inst) = @_;
    return 0 unless $inst->{pid};
    return 1 if waitpid($inst->{pid}, WNOHANG) == 0;
    push @{ $inst->{stops} }, { died => 1, status => $? };
    _kill_group(delete $inst->{pid}, 'KILL');    # orphaned workers would keep the port
    return 0;
}

# HUP, then wait for a fresh set of workers.  conf => $text first rewrites
# nginx.conf from a new template.  Returns false if the workers never changed
# (a bad new config leaves the old ones serving, and logs an [emerg]).
sub reload_nginx {
    my ($self, $name, %opts) = @_;
    $name //= 'n1';
    my $inst = $self->{nginx}{$name};
    croak "nginx $name is not running" unless $inst && $self->_nginx_alive($inst);
    my $conf = $inst->{conf} = $opts{conf} // $inst->{conf};

    $self->write_file("$inst->{dir}/nginx.conf", $self->_expand($conf, $name, $inst->{dir}));
    my $pid = $inst->{pid};
    my %old = map { $_ => 1 } my @old = _worker_pids($pid);
    kill 'HUP', $pid;
    return $self->wait_for(sub {
        my @now = _worker_pids($pid);
        return @now && @now >= @old && !grep { $old{$_} } @now;
    }, timeout => 10 * $SLOW, interval => 0.05);
}

# Worker processes of a master that are serving (not "shutting down" after a reload).
sub _worker_pids {
    my ($master) = @_;
    my @workers;
    for my $stat (glob '/proc/[0-9]*/stat') {
        my ($pid) = $stat =~ m{/proc/(\d+)/};
        my ($ppid) = _read_file($stat) =~ /\)\s+\S+\s+(\d+)/ or next;
        next unless $ppid == $master;
        (my $title = _read_file("/proc/$pid/cmdline")) =~ tr/\0//d;
        # under valgrind the title is valgrind's command line: any child counts
        push @workers, $pid if $title eq 'nginx: worker process' || $VALGRIND;
    }
    return @workers;
}

sub stop_nginx {
    my ($self, $name) = @_;
    $name //= 'n1';
    my $inst = $self->{nginx}{$name} or croak "no nginx named $name";
    return unless $self->_nginx_alive($inst);
    my $pid = delete $inst->{pid};

    my $started = time;
    kill 'QUIT', $pid;
    my $graceful = _reap($pid, 10 * $SLOW);
    my $status = $?;
    my $seconds = time - $started;
    unless ($graceful) {
        _kill_group($pid, 'TERM');
        _reap($pid, 5) or _kill_group($pid, 'KILL') && _reap($pid, 5);
    }
    _kill_group($pid, 'KILL');    # any worker left behind by a crashed master
    push @{ $inst->{stops} }, { seconds => $seconds, graceful => $graceful, status => $status };
    return $seconds;
}

sub error_log {
    my ($self, $name) = @_;
    return _read_file("$self->{dir}/" . ($name // 'n1') . '/error.log');
}

# Lines matching $re no longer fail the [alert]/[emerg]/[crit] check (for tests
# that provoke such a line on purpose).
sub allow_log {
    my ($self, $re) = @_;
    push @{ $self->{allowed_log} }, $re;
}

# --- redis ------------------------------------------------------------------

sub start_redis {
    my ($self, %opts) = @_;
    my $name = $opts{name} // 'r1';
    croak "redis $name is already running" if $self->{redis}{$name}{pid};
    my $dir  = "$self->{dir}/$name";
    my $port = $self->port("REDIS_$name");
    make_path($dir);

    my $pid = _spawn([ 'redis-server', '--port', $port, '--bind', '127.0.0.1', '--save', '',
                       '--appendonly', 'no', '--dir', $dir, @{ $opts{args} // [] } ],
                     "$dir/redis.log");
    my $redis = $self->{redis}{$name} = { pid => $pid, port => $port, dir => $dir };

    my $up = $self->wait_for(sub {
        return 1 if waitpid($pid, WNOHANG) != 0;    # stop waiting: it died
        my $pong = eval { _resp_command($port, 0.5, 'PING') };
        return defined $pong && $pong eq 'PONG';
    }, timeout => 5, interval => 0.05);
    unless ($up && kill 0, $pid) {
        delete $redis->{pid};
        Test::More::BAIL_OUT("redis-server $name did not start\n" . _tail("$dir/redis.log", 20));
    }
    return $port;
}

sub redis_port {
    my ($self, $name) = @_;
    my $redis = $self->{redis}{$name} or croak "no redis named $name was started";
    return $redis->{port};
}

sub stop_redis {
    my ($self, $name) = @_;
    my $pid = delete $self->{redis}{$name}{pid} or return;
    kill 'CONT', $pid;    # a stopped process would not act on TERM
    kill 'TERM', $pid;
    _reap($pid, 5) or kill('KILL', $pid) && _reap($pid, 5);
}

# SIGSTOP leaves the socket accepting connections that are never answered:
# the slow-dependency case, unlike a refused connect.
sub pause_redis  { my ($self, $name) = @_; kill 'STOP', $self->{redis}{$name}{pid} // croak "redis $name is not running" }
sub resume_redis { my ($self, $name) = @_; kill 'CONT', $self->{redis}{$name}{pid} // croak "redis $name is not running" }

# One command over a fresh connection.  Replies: simple strings and bulks as
# strings, integers as numbers, nil as undef, arrays as arrayrefs, errors as
# { error => "ERR ..." }.  Dies on connection failure or timeout.
sub redis {
    my ($self, $name, @args) = @_;
    return _resp_command($self->redis_port($name), $self->{redis_timeout}, @args);
}

sub _resp_command {
    my ($port, $timeout, @args) = @_;
    my $deadline = time + $timeout;
    my $sock = IO::Socket::INET->new(PeerAddr => '127.0.0.1', PeerPort => $port,
                                      Proto => 'tcp', Timeout => $timeout)
        or die "redis 127.0.0.1:$port: connect: $@\n";
    local $SIG{PIPE} = 'IGNORE';
    my $request = '*' . @args . "\r\n" . join '', map { '$' . length($_) . "\r\n$_\r\n" } @args;
    _write_all($sock, $request) or die "redis 127.0.0.1:$port: write: $!\n";

    my $buf = '';
    my $fill = sub {
        my $left = $deadline - time;
        die "redis 127.0.0.1:$port: timeout\n"
            unless $left > 0 && IO::Select->new($sock)->can_read($left);
        sysread($sock, $buf, 65536, length $buf) or die "redis 127.0.0.1:$port: connection closed\n";
    };
    my $line = sub {
        my $eol;
        $fill->() while ($eol = index $buf, "\r\n") < 0;
        my $l = substr $buf, 0, $eol;
        substr($buf, 0, $eol + 2) = '';
        return $l;
    };
    my $reply;
    $reply = sub {
        my ($type, $rest) = $line->() =~ /^(.)(.*)$/ or die "redis: empty reply line\n";
        return $rest                  if $type eq '+';
        return { error => $rest }     if $type eq '-';
        return 0 + $rest              if $type eq ':';
        return [ map { $reply->() } 1 .. $rest ] if $type eq '*' && $rest >= 0;
        return undef                  if $rest < 0;    # nil bulk or nil array
        if ($type eq '$') {
            $fill->() while length $buf < $rest + 2;
            my $bulk = substr $buf, 0, $rest;
            substr($buf, 0, $rest + 2) = '';
            return $bulk;
        }
        die "redis: unexpected reply type '$type'\n";
    };
    my $result = $reply->();
    undef $reply;    # break the closure's reference cycle
    return $result;
}

# --- stand-in HTTP servers --------------------------------------------------

sub start_upstream {
    my ($self, $name, %opts) = @_;
    croak "upstream $name is already running" if $self->{upstreams}{$name};
    return $self->{upstreams}{$name}
        = Gate::Upstream->start(port => $self->port($name), dir => $self->{dir}, %opts);
}

sub upstream { $_[0]{upstreams}{ $_[1] } }

# --- HTTP client ------------------------------------------------------------

sub request {
    my ($self, $method, $path, %opts) = @_;
    my $port    = $opts{port} // $self->http_port($opts{node});
    my $timeout = $opts{timeout} // 10;
    my $bytes   = $opts{raw} // _build_request($method, $path, \%opts);

    my $started = time;
    my $result = _exchange($port, $bytes, $timeout, $method);
    $result->{elapsed} = time - $started;
    return $result;
}

sub _build_request {
    my ($method, $path, $opts) = @_;
    my @headers = @{ $opts->{headers} // [] };
    my $body = $opts->{body};
    my %given = map { lc($headers[$_]) => 1 } grep { $_ % 2 == 0 } 0 .. $#headers;

    if (exists $opts->{json}) {
        $body = $JSON->encode($opts->{json});
        push @headers, 'Content-Type' => 'application/json' unless $given{'content-type'};
    }
    push @headers, Host => 'localhost'  unless $given{host};
    push @headers, Connection => 'close' unless $given{connection};
    push @headers, 'Content-Length' => length $body
        if defined $body && !$given{'content-length'} && !$given{'transfer-encoding'};

    my $out = "$method $path HTTP/1.1\r\n";
    while (my ($name, $value) = splice @headers, 0, 2) {
        $out .= "$name: $value\r\n";
    }
    return $out . "\r\n" . ($body // '');
}

# Sends the bytes, reads until EOF, and parses the first response.  Never dies.
sub _exchange {
    my ($port, $bytes, $timeout, $method) = @_;
    my $deadline = time + $timeout;
    my $sock = IO::Socket::INET->new(PeerAddr => '127.0.0.1', PeerPort => $port,
                                      Proto => 'tcp', Timeout => $timeout)
        or return { status => 0, error => "connect to 127.0.0.1:$port: $@" };
    local $SIG{PIPE} = 'IGNORE';    # the server may answer and close before reading the body
    _write_all($sock, $bytes);

    my ($raw, $eof) = ('', 0);
    while (!$eof) {
        my $left = $deadline - time;
        last unless $left > 0 && IO::Select->new($sock)->can_read($left);
        my $n = sysread $sock, $raw, 65536, length $raw;
        $eof = 1 unless $n;
    }
    close $sock;

    my $result = _parse_response($raw, $method);
    $result->{raw} = $raw;
    if (!$eof && !$result->{complete}) {
        return { status => 0, error => 'timeout', raw => $raw };
    }
    return $result;
}

sub _parse_response {
    my ($raw, $method) = @_;
    my $rest = $raw;
    my ($status, $head);
    do {
        my $end = index $rest, "\r\n\r\n";
        return { status => 0, error => 'incomplete response headers' } if $end < 0;
        $head = substr $rest, 0, $end;
        $rest = substr $rest, $end + 4;
        ($status) = $head =~ m{^HTTP/\d\.\d (\d{3})}
            or return { status => 0, error => 'bad status line' };
    } while ($status =~ /^1/);    # skip interim responses such as 100 Continue

    my %headers;
    for my $line (split /\r\n/, $head) {
        my ($name, $value) = $line =~ /^([^:\s]+):\s*(.*?)\s*$/ or next;
        $name = lc $name;
        if (!exists $headers{$name})  { $headers{$name} = $value }
        elsif (ref $headers{$name})   { push @{ $headers{$name} }, $value }
        else                          { $headers{$name} = [ $headers{$name}, $value ] }
    }

    my ($body, $complete) = ('', 1);
    if ($method eq 'HEAD' || $status =~ /^(?:204|304)$/) {
        # no body by definition
    }
    elsif (($headers{'transfer-encoding'} // '') =~ /chunked/i) {
        ($body) = Gate::Upstream::decode_chunked($rest);
        $complete = defined $body;
        $body //= '';
    }
    elsif (defined(my $length = $headers{'content-length'})) {
        $body = substr $rest, 0, $length;
        $complete = length $body == $length;
    }
    else {
        $body = $rest;
        $complete = 0;    # only EOF ends such a body
    }

    my $json = eval { $JSON->decode($body) };
    return { status => 0 + $status, headers => \%headers, body => $body, json => $json,
             complete => $complete };
}

sub _write_all {
    my ($sock, $bytes) = @_;
    while (length $bytes) {
        my $n = syswrite $sock, $bytes;
        return 0 unless $n;
        substr($bytes, 0, $n) = '';
    }
    return 1;
}

sub _port_open {
    my ($port) = @_;
    my $sock = IO::Socket::INET->new(PeerAddr => '127.0.0.1', PeerPort => $port,
                                      Proto => 'tcp', Timeout => 1) or return 0;
    close $sock;
    return 1;
}

# --- end of file ------------------------------------------------------------

# Stops everything and runs the end-of-file checks as tests.  Call it before
# done_testing; END calls it for a file that died before getting there.
sub finish {
    my ($self, %opts) = @_;
    return if $self->{finished}++;
    @LIVE = grep { $_ != $self } @LIVE;

    for my $name (@{ $self->{nginx_order} }) {
        $self->stop_nginx($name);
        $self->_check_nginx($name, $opts{quiet}) unless $opts{no_checks};
    }
    $self->stop_redis($_) for keys %{ $self->{redis} };
    $_->stop for values %{ $self->{upstreams} };

    # a private PostgreSQL lives in the temp dir: stop it before the dir goes
    $_->finish for @{ $self->{stores} // [] };

    my $keep = $ENV{GATE_TEST_LEAVE} || $opts{failed} || $self->{quiet_failure}
        || !Test::More->builder->is_passing;
    if ($keep) {
        Test::More::diag("Gate::Test: test dir kept at $self->{dir}");
    }
    else {
        remove_tree($self->{dir});
    }
}

sub _check_nginx {
    my ($self, $name, $quiet) = @_;
    my $inst = $self->{nginx}{$name};
    my $dir  = $inst->{dir};
    my $log  = _read_file("$dir/error.log");
    my $check = sub {
        my ($ok, $what, @detail) = @_;
        if ($quiet) {
            Test::More::diag("Gate::Test: end check failed: $what", map { "\n  $_" } @detail) unless $ok;
            $self->{quiet_failure} ||= !$ok;
        }
        else {
            Test::More::ok($ok, $what) or Test::More::diag(join "\n", @detail);
        }
    };

    my @bad = grep { my $line = $_; !grep { $line =~ $_ } @{ $self->{allowed_log} } }
              grep { /\[(?:alert|emerg|crit)\]/ } split /\n/, $log;
    $check->(!@bad, "nginx $name: no [alert], [emerg] or [crit] in error.log", @bad[0 .. _min(19, $#bad)]);

    my @sanitizer = grep { /Sanitizer|runtime error:/ } split /\n/, $log . _read_file("$dir/stderr.log");
    $check->(!@sanitizer, "nginx $name: no sanitizer reports", @sanitizer[0 .. _min(19, $#sanitizer)]);

    my $limit = 5 * $SLOW;
    my @slow = grep { $_->{died} || !$_->{graceful} || $_->{seconds} > $limit
                      || (!$VALGRIND && $_->{status}) } @{ $inst->{stops} };
    $check->(!@slow, "nginx $name: exited cleanly within ${limit}s of QUIT",
             map { $_->{died} ? "died on its own, wait status $_->{status}"
                              : sprintf('took %.1fs, %s, wait status %d', $_->{seconds},
                                        $_->{graceful} ? 'exited' : 'had to be killed', $_->{status}) }
             @slow);

    if ($VALGRIND) {
        my @reports = grep { /ERROR SUMMARY: [1-9]|definitely lost: [1-9]/ }
                      map { my $f = $_; map { "$f: $_" } split /\n/, _read_file($f) }
                      glob "$dir/valgrind.*.log";
        $check->(!@reports, "nginx $name: no valgrind errors", @reports);
    }
}

sub _min { $_[0] < $_[1] ? $_[0] : $_[1] }

sub DESTROY {
    my ($self) = @_;
    local $?;
    $self->finish(quiet => 1) if !$self->{finished} && $self->{owner} == $$;
}

END {
    for my $self (grep { $_->{owner} == $$ } @LIVE) {
        # A file that died, or forgot finish(), still gets its children stopped.
        # Once a plan exists (done_testing, skip_all), more tests would break
        # it, so failures are reported by diag and the exit code.
        # After BAIL_OUT the checks would only repeat what the bail said.
        my $hub = Test2::API::test2_stack()->top;
        my $exit = $?;
        $self->finish(quiet => defined $hub->plan, no_checks => $hub->bailed_out,
                      failed => $exit != 0);
        $exit ||= 1 if $self->{quiet_failure};
        $? = $exit;
    }
}

# --- processes --------------------------------------------------------------

# Forks and execs @$cmd in its own process group (so its workers can be killed
# with it), stdout and stderr to $log.  Returns the pid.
sub _spawn {
    my ($cmd, $log) = @_;
    my $pid = fork // croak "fork: $!";
    if ($pid == 0) {
        POSIX::setpgid(0, 0);
        open STDIN, '<', '/dev/null';
        open STDOUT, '>>', $log;
        open STDERR, '>&', \*STDOUT;
        exec { $cmd->[0] } @$cmd or print STDERR "exec $cmd->[0]: $!\n";
        POSIX::_exit(127);    # never run the test's END blocks in a child
    }
    POSIX::setpgid($pid, $pid);    # also from the parent, to win the race with a kill
    return $pid;
}

# Waits up to $timeout seconds for $pid to exit; true if it did ($? holds its status).
sub _reap {
    my ($pid, $timeout) = @_;
    my $deadline = time + $timeout;
    while (time < $deadline) {
        my $r = waitpid $pid, WNOHANG;
        return 1 if $r == $pid || $r < 0;
        sleep 0.01;
    }
    return 0;
}

sub _kill_group {
    my ($pid, $signal) = @_;
    kill $signal, -$pid;
    return 1;
}

sub _tail {
    my ($path, $lines) = @_;
    my @all = split /\n/, _read_file($path);
    splice @all, 0, -$lines if @all > $lines;
    return join '', map { "$_\n" } @all;
}

1;
