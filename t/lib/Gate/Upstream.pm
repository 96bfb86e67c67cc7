package Gate::Upstream;

# A stand-in HTTP/1.1 server for peers outside the product (a tenant's app, a
# courier receiver).  By default it answers every request with 200 and a JSON
# description of what it received, and logs each request as one JSON line in
# <dir>/upstream-<port>.log, so tests can assert what nginx forwarded.
#
#   my $u = Gate::Upstream->start(port => $port, dir => $dir);
#   ... $u->requests ...   # list of {method, uri, headers, body}
#   $u->stop;
#
# A test may pass respond => sub { my ($req) = @_; return ($status, [name => value, ...], $body) }
# to answer differently (the sub runs in the server's process, so it cannot
# change the test's variables).

use strict;
use warnings;

use Carp qw(croak);
use Fcntl qw(:flock);
use IO::Select;
use IO::Socket::INET;
use JSON::PP ();
use POSIX ();

my $JSON = JSON::PP->new->utf8->canonical;

# Idle keep-alive connections are dropped after this long, so a connection
# child never outlives a test by much even if nobody kills it.
my $IDLE_TIMEOUT = 60;

my %RUNNING;    # server pid => pid of the process that started it

sub start {
    my ($class, %opts) = @_;
    my $port    = $opts{port} // croak 'Gate::Upstream->start: port is required';
    my $dir     = $opts{dir}  // croak 'Gate::Upstream->start: dir is required';
    my $respond = $opts{respond} // \&echo;

    # Listen before forking: the port accepts as soon as start() returns,
    # so callers need no wait loop.
    my $listen = IO::Socket::INET->new(
        LocalAddr => '127.0.0.1',
        LocalPort => $port,
        Proto     => 'tcp',
        Listen    => 128,
        ReuseAddr => 1,
    ) or croak "Gate::Upstream: cannot listen on 127.0.0.1:$port: $@";

    my $log = "$dir/upstream-$port.log";
    open my $truncate, '>', $log or croak "Gate::Upstream: cannot create $log: $!";
    close $truncate;

    my $pid = fork // croak "Gate::Upstream: fork: $!";
    if ($pid == 0) {
        # Own process group, so stop() reaches the connection children too.
        POSIX::setpgid(0, 0);
        eval { _serve($listen, $log, $respond) };
        POSIX::_exit(0);    # never run the test's END blocks in a child
    }
    POSIX::setpgid($pid, $pid);    # also from the parent, to win the race with stop()
    close $listen;
    $RUNNING{$pid} = $$;

    return bless { pid => $pid, port => $port, log => $log }, $class;
}

sub port { $_[0]{port} }
sub pid  { $_[0]{pid} }
sub log_file { $_[0]{log} }

# Every request received so far, oldest first, as decoded hashes.
sub requests {
    my ($self) = @_;
    open my $fh, '<', $self->{log} or return ();
    return map { $JSON->decode($_) } grep { /\S/ } <$fh>;
}

sub stop {
    my ($self) = @_;
    my $pid = delete $self->{pid} or return;
    _kill_group($pid);
    delete $RUNNING{$pid};
}

sub stop_all {
    for my $pid (keys %RUNNING) {
        next unless $RUNNING{$pid} == $$;
        _kill_group($pid);
        delete $RUNNING{$pid};
    }
}

END { local $?; stop_all() }

sub _kill_group {
    my ($pid) = @_;
    kill 'TERM', -$pid;
    waitpid $pid, 0;
}

# The default answer: 200 with a JSON description of the request.
sub echo {
    my ($req) = @_;
    return (200, ['Content-Type' => 'application/json'], $JSON->encode($req));
}

# Decodes a complete chunked body at the start of $buf.  Returns
# ($body, $bytes_consumed), or an empty list while the body is incomplete.
sub decode_chunked {
    my ($buf) = @_;
    my ($body, $pos) = ('', 0);
    while (1) {
        my $eol = index $buf, "\r\n", $pos;
        return if $eol < 0;
        my ($hex) = substr($buf, $pos, $eol - $pos) =~ /^\s*([0-9a-fA-F]+)/
            or return;
        my $size = hex $hex;
        $pos = $eol + 2;
        if ($size == 0) {
            # Skip trailers up to the empty line that ends the message.
            my $end = index $buf, "\r\n\r\n", $eol;
            return if $end < 0;
            return ($body, $end + 4);
        }
        return if length($buf) < $pos + $size + 2;
        $body .= substr $buf, $pos, $size;
        $pos += $size + 2;
    }
}

sub _serve {
    my ($listen, $log, $respond) = @_;
    $SIG{CHLD} = 'IGNORE';    # connection children reap themselves
    $SIG{$_} = 'DEFAULT' for qw(TERM INT PIPE);

    while (1) {
        my $client = $listen->accept or do { select undef, undef, undef, 0.01; next };
        my $pid = fork;
        if (defined $pid && $pid == 0) {
            close $listen;
            eval { _serve_connection($client, $log, $respond) };
            POSIX::_exit(0);
        }
        close $client;
    }
}

# One connection, many requests: nginx's upstream keepalive reuses connections.
sub _serve_connection {
    my ($client, $log, $respond) = @_;
    my $buf = '';
    while (my $req = _read_request($client, \$buf)) {
        my $keep_alive = _keep_alive($req);
        my $seen = _describe($req);
        _append_log($log, $seen);
        my ($status, $headers, $body) = $respond->($seen);
        _write_response($client, $status, $headers // [], $body // '', $keep_alive);
        return unless $keep_alive;
    }
}

# Reads one request from the connection; undef when the peer closed or idled.
sub _read_request {
    my ($sock, $buf) = @_;

    my $head_end;
    until (($head_end = index $$buf, "\r\n\r\n") >= 0) {
        _fill($sock, $buf) or return;
    }
    my $head = substr $$buf, 0, $head_end;
    substr($$buf, 0, $head_end + 4) = '';

    my ($request_line, @lines) = split /\r\n/, $head;
    my ($method, $uri, $version) = $request_line =~ m{^(\S+) (\S+) HTTP/(\d\.\d)$}
        or return;
    my @headers = map { /^([^:]+):\s*(.*?)\s*$/ ? [lc $1, $2] : () } @lines;
    my ($chunked) = grep { $_->[0] eq 'transfer-encoding' && $_->[1] =~ /chunked/i } @headers;
    my ($length)  = map { $_->[1] } grep { $_->[0] eq 'content-length' } @headers;

    my $body = '';
    if ($chunked) {
        my ($decoded, $used);
        until (($decoded, $used) = decode_chunked($$buf)) {
            _fill($sock, $buf) or return;
        }
        $body = $decoded;
        substr($$buf, 0, $used) = '';
    }
    elsif ($length) {
        while (length $$buf < $length) {
            _fill($sock, $buf) or return;
        }
        $body = substr $$buf, 0, $length, '';
    }

    return { method => $method, uri => $uri, version => $version, headers => \@headers, body => $body };
}

sub _fill {
    my ($sock, $buf) = @_;
    return 0 unless IO::Select->new($sock)->can_read($IDLE_TIMEOUT);
    return sysread($sock, $$buf, 65536, length $$buf) ? 1 : 0;
}

sub _keep_alive {
    my ($req) = @_;
    my ($connection) = map { $_->[1] } grep { $_->[0] eq 'connection' } @{ $req->{headers} };
    $connection = lc($connection // '');
    return $connection ne 'close' if $req->{version} eq '1.1';
    return $connection eq 'keep-alive';
}

# The JSON-friendly view of a request: repeated headers joined with ", ",
# text decoded from UTF-8 where it is valid.
sub _describe {
    my ($req) = @_;
    my %headers;
    for (@{ $req->{headers} }) {
        my ($name, $value) = @$_;
        $headers{$name} = exists $headers{$name} ? "$headers{$name}, $value" : $value;
    }
    utf8::decode($_) for values %headers;
    my $body = $req->{body};
    utf8::decode($body);
    return { method => $req->{method}, uri => $req->{uri}, headers => \%headers, body => $body };
}

sub _append_log {
    my ($log, $record) = @_;
    # Connection children write concurrently; the lock keeps lines whole.
    open my $fh, '>>', $log or return;
    flock $fh, LOCK_EX;
    syswrite $fh, $JSON->encode($record) . "\n";
    close $fh;
}

my %REASON = (200 => 'OK', 201 => 'Created', 204 => 'No Content', 400 => 'Bad Request',
              401 => 'Unauthorized', 403 => 'Forbidden', 404 => 'Not Found',
              429 => 'Too Many Requests', 500 => 'Internal Server Error',
              502 => 'Bad Gateway', 503 => 'Service Unavailable');

sub _write_response {
    my ($sock, $status, $headers, $body, $keep_alive) = @_;
    my @headers = @$headers;
    my %given = map { lc($headers[$_]) => 1 } grep { $_ % 2 == 0 } 0 .. $#headers;
    # A respond sub that sets Transfer-Encoding frames the body itself.
    push @headers, 'Content-Length' => length $body
        unless exists $given{'content-length'} || exists $given{'transfer-encoding'};
    push @headers, Connection => 'close' unless $keep_alive;

    my $out = sprintf "HTTP/1.1 %d %s\r\n", $status, $REASON{$status} // 'Status';
    while (my ($name, $value) = splice @headers, 0, 2) {
        $out .= "$name: $value\r\n";
    }
    $out .= "\r\n" . $body;

    while (length $out) {
        my $n = syswrite $sock, $out;
        return unless $n;
        substr($out, 0, $n) = '';
    }
}

1;
