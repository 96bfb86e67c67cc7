package Gate::Kratos;

# A Kratos of a test's own, for tests that stop it.  It serves the suite's
# (already migrated) kratos database, so identities are shared with the
# suite's Kratos; it runs no courier.

use strict;
use warnings;

use Carp qw(croak);
use File::Path qw(make_path);
use POSIX ();
use Time::HiRes qw(sleep time);
use IO::Socket::INET;

sub start {
    my ($class, $t, %opts) = @_;
    my $name = $opts{name} // 'k1';
    my $self = bless { t => $t, name => $name, dir => $t->dir . "/$name",
                       public => $t->port("KPUB_$name"), admin => $t->port("KADM_$name") }, $class;
    make_path($self->{dir});

    open my $in, '<', $t->root . '/conf/kratos/kratos.yml' or croak $!;
    my $conf = do { local $/; <$in> };
    my %v = (
        PUBLIC_PORT => $self->{public}, ADMIN_PORT => $self->{admin},
        DSN => "postgres://postgres\@127.0.0.1:$ENV{GATE_TEST_PG_PORT}/kratos?sslmode=disable",
        PUBLIC_URL => "http://127.0.0.1:$self->{public}",
        HOOK_URL => "http://127.0.0.1:1/unused", COURIER_URL => "http://127.0.0.1:1/unused",
        CONF => $t->root . '/conf/kratos', HOOK_SECRET => 'unused',
    );
    $conf =~ s/%%(\w+)%%/$v{$1} \/\/ croak "no value for %%$1%%"/ge;
    my $file = $t->write_file("$name/kratos.yml", $conf);

    my $bin = $ENV{GATE_TEST_KRATOS_BIN} // croak 'GATE_TEST_KRATOS_BIN is not set';
    my $pid = fork // croak "fork: $!";
    if ($pid == 0) {
        POSIX::setpgid(0, 0);
        open STDIN, '<', '/dev/null';
        open STDOUT, '>', "$self->{dir}/kratos.log";
        open STDERR, '>&', \*STDOUT;
        $ENV{SQA_OPT_OUT} = 'true';
        exec($bin, 'serve', '-c', $file, '--dev', '--sqa-opt-out') or POSIX::_exit(127);
    }
    $self->{pid} = $pid;

    my $ready = $t->wait_for(sub {
        my $s = IO::Socket::INET->new(PeerAddr => "127.0.0.1:$self->{public}", Timeout => 1) or return 0;
        print $s "GET /health/ready HTTP/1.0\r\n\r\n";
        my $line = <$s> // '';
        return $line =~ / 200 /;
    }, timeout => 30, interval => 0.1);
    croak "Kratos $name did not become ready (see $self->{dir}/kratos.log)" unless $ready;
    return $self;
}

sub admin_port  { $_[0]{admin} }
sub public_port { $_[0]{public} }

sub stop {
    my ($self) = @_;
    my $pid = delete $self->{pid} or return;
    kill 'TERM', $pid;
    my $until = time + 10;
    while (time < $until) {
        return if waitpid($pid, POSIX::WNOHANG()) == $pid;
        sleep 0.05;
    }
    kill 'KILL', $pid;
    waitpid $pid, 0;
}

sub DESTROY { $_[0]->stop }

1;
