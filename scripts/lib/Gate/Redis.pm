package Gate::Redis;

# A minimal blocking RESP client for scripts (gatectl, tests).  nginx never
# uses this: the module speaks to Redis through hiredis' async API.

use strict;
use warnings;

use IO::Socket::INET;

sub new {
    my ($class, %opt) = @_;
    my $self = bless { host => $opt{host} // '127.0.0.1',
                       port => $opt{port} // 6379,
                       timeout => $opt{timeout} // 5 }, $class;
    $self->{sock} = IO::Socket::INET->new(
        PeerAddr => $self->{host}, PeerPort => $self->{port},
        Proto => 'tcp', Timeout => $self->{timeout},
    ) or die "Redis is not reachable at $self->{host}:$self->{port}\n";
    return $self;
}

# Sends one command; returns the reply (arrays as array refs, nil as
# undef).  A Redis error dies with its text.
sub command {
    my ($self, @args) = @_;
    my $req = '*' . @args . "\r\n";
    $req .= '$' . length($_) . "\r\n$_\r\n" for map { defined $_ ? "$_" : '' } @args;

    my $sock = $self->{sock};
    print {$sock} $req or die "Redis write failed: $!\n";

    my $reply = $self->_read;
    die "Redis: $reply->{error}\n" if ref $reply eq 'HASH';
    return $reply;
}

sub _line {
    my ($self) = @_;
    local $/ = "\r\n";
    my $line = readline $self->{sock};
    die "Redis closed the connection\n" unless defined $line;
    chomp $line;
    return $line;
}

sub _read {
    my ($self) = @_;
    my $line = $self->_line;
    my ($type, $rest) = (substr($line, 0, 1), substr($line, 1));

    return $rest if $type eq '+';
    return { error => $rest } if $type eq '-';
    return 0 + $rest if $type eq ':';

    if ($type eq '$') {
        return undef if $rest < 0;
        my $buf = '';
        while (length $buf < $rest + 2) {
            my $n = read $self->{sock}, $buf, $rest + 2 - length $buf, length $buf;
            die "Redis closed the connection\n" unless $n;
        }
        return substr $buf, 0, $rest;
    }

    if ($type eq '*') {
        return undef if $rest < 0;
        return [ map { $self->_read } 1 .. $rest ];
    }

    die "Redis: unexpected reply \"$line\"\n";
}

1;
