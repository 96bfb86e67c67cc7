package Gate::Store;

# PostgreSQL for tests: a fresh database per test file in the suite's
# cluster (scripts/test starts it), or a private cluster a test may stop and
# start; plus scripts/gatectl run against them.
#
#   my $pg = Gate::Store->new($t);                 # database in the suite cluster
#   my $pg = Gate::Store->new($t, private => 1);   # own cluster, own port
#   $pg->conninfo;  $pg->sql($query, name => $value);  $pg->gatectl(@args)

use strict;
use warnings;

use Carp qw(croak);
use File::Path qw(make_path);
use POSIX ();
use Test::More ();

my $PG_BIN = '/usr/lib/postgresql/15/bin';
my @LIVE;

sub new {
    my ($class, $t, %opts) = @_;
    my $self = bless { t => $t, redis => $opts{redis} // 'r1' }, $class;

    if ($opts{private}) {
        $self->_start_cluster;
        $self->{db} = 'gate';
    } else {
        Test::More::plan(skip_all => 'needs the suite PostgreSQL: run through scripts/test')
            unless $ENV{GATE_TEST_PG_DIR};
        $self->{host} = $ENV{GATE_TEST_PG_DIR};
        $self->{port} = $ENV{GATE_TEST_PG_PORT};
        $self->{db} = "gate_t$$";
        $self->_run('psql', '-d', 'postgres', '-c', "DROP DATABASE IF EXISTS $self->{db}");
        $self->_run('psql', '-d', 'postgres', '-c', "CREATE DATABASE $self->{db}") == 0
            or croak 'cannot create a test database';
    }

    $self->migrate or croak 'migrations failed';
    push @LIVE, $self;
    push @{ $t->{stores} }, $self;    # $t->finish stops it before removing its dir
    return $self;
}

sub host { $_[0]{host} }
sub port { $_[0]{port} }
sub db   { $_[0]{db} }

sub conninfo {
    my ($self) = @_;
    return "host=$self->{host} port=$self->{port} dbname=$self->{db} user=postgres";
}

sub migrate {
    my ($self) = @_;
    local $ENV{PGOPTIONS} = '-c client_min_messages=warning';
    for my $f (sort glob($self->{t}->root . '/conf/sql/*.sql')) {
        return 0 if $self->_run('psql', '-q', '-d', $self->{db}, '-f', $f) != 0;
    }
    return 1;
}

# Rows of a query as array refs; values are psql variables (:'name').
sub sql {
    my ($self, $query, %vars) = @_;
    my $file = $self->{t}->write_file("query-$$.sql", $query);
    my @cmd = ($self->_psql, '-q', '-t', '-A', '-F', "\t", '-d', $self->{db}, '-f', $file,
               map { ('-v', "$_=$vars{$_}") } sort keys %vars);
    open my $fh, '-|', @cmd or croak "psql: $!";
    my @rows = map { chomp; [ split /\t/, $_, -1 ] } grep { /\S/ } <$fh>;
    close $fh;
    croak "query failed: $query" if $?;
    return @rows;
}

# scripts/gatectl against this database and the named Redis.
sub gatectl {
    my ($self, @args) = @_;
    my $t = $self->{t};
    local $ENV{GATE_PG_HOST} = $self->{host};
    local $ENV{GATE_PG_PORT} = $self->{port};
    local $ENV{GATE_PG_DB} = $self->{db};
    local $ENV{GATE_REDIS_PORT} = $t->redis_port($self->{redis});

    my $out = $t->write_file("gatectl-$$.out", '');
    my $err = $t->write_file("gatectl-$$.err", '');
    my $pid = fork // croak "fork: $!";
    if ($pid == 0) {
        open STDIN, '<', '/dev/null';
        open STDOUT, '>', $out;
        open STDERR, '>', $err;
        exec($t->root . '/scripts/gatectl', @args) or POSIX::_exit(127);
    }
    waitpid $pid, 0;
    my $rc = $? >> 8;
    return { rc => $rc, out => _slurp($out), err => _slurp($err) };
}

# --- a private cluster ------------------------------------------------------

sub _start_cluster {
    my ($self) = @_;
    my $t = $self->{t};
    my $dir = $t->dir . '/pg';
    chmod 0755, $t->dir;
    make_path($dir);
    _as_postgres_owner($dir);

    $self->{host} = $dir;
    $self->{port} = $t->port('PG');
    $self->{dir} = $dir;
    $self->{private} = 1;

    _as_postgres("$PG_BIN/initdb", '-D', "$dir/data", '-U', 'postgres', '-A', 'trust',
                 '-E', 'UTF8') == 0 or croak 'initdb failed';
    $self->start;
    $self->_run('psql', '-d', 'postgres', '-c', 'CREATE DATABASE gate') == 0
        or croak 'cannot create database gate';
}

sub start {
    my ($self) = @_;
    croak 'only a private cluster starts and stops' unless $self->{private};
    _as_postgres("$PG_BIN/pg_ctl", '-D', "$self->{dir}/data", '-l', "$self->{dir}/postgres.log",
                 '-w', '-t', '30', '-o',
                 "-p $self->{port} -k $self->{dir} -c listen_addresses=127.0.0.1 -c fsync=off",
                 'start') == 0 or croak 'PostgreSQL did not start';
}

sub stop {
    my ($self) = @_;
    croak 'only a private cluster starts and stops' unless $self->{private};
    _as_postgres("$PG_BIN/pg_ctl", '-D', "$self->{dir}/data", '-m', 'immediate', '-w', 'stop');
}

sub finish {
    my ($self) = @_;
    return if $self->{finished}++;
    @LIVE = grep { $_ != $self } @LIVE;
    if ($self->{private}) {
        $self->stop if -f "$self->{dir}/data/postmaster.pid";
    } else {
        $self->_run('psql', '-d', 'postgres', '-c', "DROP DATABASE IF EXISTS $self->{db} WITH (FORCE)");
    }
}

END { $_->finish for @LIVE }

# --- plumbing ---------------------------------------------------------------

sub _psql {
    my ($self) = @_;
    return ('psql', '-X', '-v', 'ON_ERROR_STOP=1', '-h', $self->{host}, '-p', $self->{port},
            '-U', 'postgres');
}

sub _run {
    my ($self, $prog, @args) = @_;
    my @cmd = $prog eq 'psql' ? ($self->_psql, @args) : ($prog, @args);
    local $ENV{PGOPTIONS} = '-c client_min_messages=warning';
    my $pid = fork // croak "fork: $!";
    if ($pid == 0) {
        open STDIN, '<', '/dev/null';
        open STDOUT, '>', '/dev/null';
        exec(@cmd) or POSIX::_exit(127);
    }
    waitpid $pid, 0;
    return $? >> 8;
}

# PostgreSQL refuses to run as root: run its programs as the postgres user.
sub _as_postgres {
    my @cmd = @_;
    unshift @cmd, 'runuser', '-u', 'postgres', '--' if $> == 0;
    my $pid = fork // croak "fork: $!";
    if ($pid == 0) {
        open STDIN, '<', '/dev/null';
        open STDOUT, '>', '/dev/null';
        exec(@cmd) or POSIX::_exit(127);
    }
    waitpid $pid, 0;
    return $? >> 8;
}

sub _as_postgres_owner {
    my ($dir) = @_;
    return unless $> == 0;
    my (undef, undef, $uid, $gid) = getpwnam('postgres') or croak 'no postgres user';
    chown $uid, $gid, $dir;
}

sub _slurp {
    my ($file) = @_;
    open my $fh, '<', $file or return '';
    local $/;
    return <$fh> // '';
}

1;
