package Gate::Ctl;

# The body of scripts/gatectl.  SQL always goes through psql variables
# (:'name'), never through string building, so an operator's input is data.

use strict;
use warnings;

use Compress::Zlib qw(crc32);
use Digest::SHA qw(sha256_hex);
use File::Basename qw(dirname);
use Cwd qw(abs_path);
use Gate::Redis;

my $ROOT = abs_path(dirname(__FILE__) . '/../../..');

my %USAGE = (
    tenant => <<'EOT',
usage: gatectl tenant create --slug SLUG --name NAME [--plan PLAN]
       gatectl tenant list
       gatectl tenant show SLUG [--field id|slug|name|plan|state]
       gatectl tenant disable SLUG
       gatectl tenant enable SLUG
EOT
    token => <<'EOT',
usage: gatectl token create SLUG --subject ID [--scope "a b"] [--ttl 1h] [--quiet]
       gatectl token revoke TOKEN_ID
EOT
);

sub main {
    my ($noun, $verb, @rest) = @_;

    if (!defined $noun || !$USAGE{$noun}) {
        print STDERR join '', values %USAGE;
        return 2;
    }

    my $sub = __PACKAGE__->can("${noun}_" . ($verb // ''));
    if (!defined $verb || !$sub) {
        print STDERR $USAGE{$noun};
        return 2;
    }

    my $rc = eval { $sub->(@rest) };
    if (!defined $rc) {
        my $err = $@ || "failed\n";
        $err =~ s/ at \S+ line \d+\.?\n?$/\n/;
        print STDERR "gatectl: $err";
        return 1;
    }

    return $rc;
}

# --name value pairs and positional arguments
sub options {
    my ($spec, @args) = @_;
    my (%opt, @pos);

    while (@args) {
        my $a = shift @args;
        if ($a =~ /^--([a-z-]+)$/) {
            my $name = $1;
            die "unknown option --$name\n" unless exists $spec->{$name};
            if ($spec->{$name} eq 'flag') {
                $opt{$name} = 1;
            } else {
                die "--$name needs a value\n" unless @args;
                $opt{$name} = shift @args;
            }
        } else {
            push @pos, $a;
        }
    }

    return (\%opt, @pos);
}

sub pg_env {
    return (
        host => $ENV{GATE_PG_HOST} // "$ROOT/.run/pg",
        port => $ENV{GATE_PG_PORT} // 5440,
        user => $ENV{GATE_PG_USER} // 'postgres',
        db   => $ENV{GATE_PG_DB} // 'gate',
    );
}

# Runs SQL with psql variables; returns rows as arrays of fields.
sub sql {
    my ($query, %vars) = @_;
    my %pg = pg_env();

    my @cmd = ('psql', '-X', '-q', '-t', '-A', '-F', "\t",
               '-h', $pg{host}, '-p', $pg{port}, '-U', $pg{user},
               '-d', $pg{db}, '-v', 'ON_ERROR_STOP=1');
    push @cmd, '-v', "$_=$vars{$_}" for sort keys %vars;

    pipe(my $in_r, my $in_w) or die "pipe: $!\n";
    pipe(my $out_r, my $out_w) or die "pipe: $!\n";
    pipe(my $err_r, my $err_w) or die "pipe: $!\n";

    my $pid = fork // die "fork: $!\n";
    if ($pid == 0) {
        close $in_w; close $out_r; close $err_r;
        open STDIN, '<&', $in_r or die;
        open STDOUT, '>&', $out_w or die;
        open STDERR, '>&', $err_w or die;
        exec @cmd or exit 127;
    }

    close $in_r; close $out_w; close $err_w;
    print {$in_w} $query;
    close $in_w;

    my $out = do { local $/; <$out_r> } // '';
    my $err = do { local $/; <$err_r> } // '';
    waitpid $pid, 0;

    if ($? != 0) {
        $err =~ s/^psql:\S*:\d+: //mg;
        $err =~ s/^ERROR:\s+//mg;
        die(($err =~ /\S/ ? $err : "PostgreSQL is not reachable\n"));
    }

    return map { [split /\t/, $_, -1] } grep { length } split /\n/, $out;
}

sub redis {
    return Gate::Redis->new(
        host => $ENV{GATE_REDIS_HOST} // '127.0.0.1',
        port => $ENV{GATE_REDIS_PORT} // 6390,
    );
}

sub valid_slug { return $_[0] =~ /\A[a-z0-9][a-z0-9-]{1,62}\z/ }

sub tenant_by_slug {
    my ($slug) = @_;
    die "invalid slug \"$slug\": use 2-63 of a-z, 0-9 and -, starting with a letter or digit\n"
        unless valid_slug($slug);

    my ($row) = sql(<<'SQL', slug => $slug);
SELECT id, slug, name, plan,
       CASE WHEN disabled_at IS NULL THEN 'enabled' ELSE 'disabled' END
  FROM tenants WHERE slug = :'slug';
SQL
    die "no tenant \"$slug\"\n" unless $row;
    return { id => $row->[0], slug => $row->[1], name => $row->[2],
             plan => $row->[3], state => $row->[4] };
}

sub tenant_create {
    my ($opt) = options({ slug => 1, name => 1, plan => 1 }, @_);
    my $slug = $opt->{slug} // die "--slug is required\n";
    my $name = $opt->{name} // die "--name is required\n";
    my $plan = $opt->{plan} // 'free';

    die "invalid slug \"$slug\": use 2-63 of a-z, 0-9 and -, starting with a letter or digit\n"
        unless valid_slug($slug);
    die "invalid name: 1 to 200 characters\n"
        unless length($name) >= 1 && length($name) <= 200;
    die "invalid plan \"$plan\"\n" unless $plan =~ /\A[a-z0-9_-]{1,32}\z/;

    my ($row) = sql(<<'SQL', slug => $slug, name => $name, plan => $plan);
INSERT INTO tenants (id, slug, name, plan)
VALUES (gen_random_uuid(), :'slug', :'name', :'plan')
ON CONFLICT (slug) DO NOTHING
RETURNING id;
SQL
    die "tenant \"$slug\" already exists\n" unless $row;

    print "$row->[0]\n";
    return 0;
}

sub tenant_list {
    my @rows = sql(<<'SQL');
SELECT id, slug, plan,
       CASE WHEN disabled_at IS NULL THEN 'enabled' ELSE 'disabled' END, name
  FROM tenants ORDER BY slug;
SQL
    printf "%-36s  %-20s  %-8s  %-8s  %s\n", qw(ID SLUG PLAN STATE NAME);
    printf "%-36s  %-20s  %-8s  %-8s  %s\n", @$_ for @rows;
    return 0;
}

sub tenant_show {
    my ($opt, $slug) = options({ field => 1 }, @_);
    die $USAGE{tenant} unless defined $slug;
    my $t = tenant_by_slug($slug);

    if (my $f = $opt->{field}) {
        die "unknown field \"$f\"\n" unless exists $t->{$f};
        print "$t->{$f}\n";
        return 0;
    }

    print "$_: $t->{$_}\n" for qw(id slug name plan state);
    return 0;
}

# Disabling a tenant ends its access tokens: marked in PostgreSQL, removed
# from Redis, and every node told to drop the tenant from its cache.
sub tenant_disable {
    my ($opt, $slug) = options({}, @_);
    die $USAGE{tenant} unless defined $slug;
    my $t = tenant_by_slug($slug);

    my @hashes = sql(<<'SQL', id => $t->{id});
BEGIN;
UPDATE tenants SET disabled_at = now()
 WHERE id = :'id' AND disabled_at IS NULL;
UPDATE access_tokens SET revoked_at = now()
 WHERE tenant_id = :'id' AND revoked_at IS NULL
RETURNING token_hash;
COMMIT;
SQL

    my $r = redis();
    $r->command('DEL', map { "gate:tok:$_->[0]" } @hashes) if @hashes;
    $r->command('PUBLISH', 'gate:invalidate', "tenant:$t->{id}");

    print "tenant $slug disabled\n";
    return 0;
}

sub tenant_enable {
    my ($opt, $slug) = options({}, @_);
    die $USAGE{tenant} unless defined $slug;
    my $t = tenant_by_slug($slug);

    sql("UPDATE tenants SET disabled_at = NULL WHERE id = :'id';\n",
        id => $t->{id});

    print "tenant $slug enabled\n";
    return 0;
}

# 1h, 30m, 7d, 3600 (seconds)
sub parse_ttl {
    my ($ttl) = @_;
    my %unit = (s => 1, m => 60, h => 3600, d => 86400);
    die "invalid ttl \"$ttl\": use e.g. 3600, 30m, 1h, 7d\n"
        unless $ttl =~ /\A([1-9][0-9]{0,8})([smhd]?)\z/;
    my $s = $1 * $unit{$2 || 's'};
    die "ttl too long: at most 365d\n" if $s > 365 * 86400;
    return $s;
}

sub random_hex {
    my ($bytes) = @_;
    open my $fh, '<:raw', '/dev/urandom' or die "/dev/urandom: $!\n";
    read($fh, my $buf, $bytes) == $bytes or die "/dev/urandom: short read\n";
    close $fh;
    return unpack 'H*', $buf;
}

# PREFIX + 56 random hex + CRC-32 of everything before it (DESIGN.md §2)
sub new_secret {
    my ($prefix) = @_;
    my $body = $prefix . random_hex(28);
    return $body . sprintf('%08x', crc32($body));
}

sub token_create {
    my ($opt, $slug) = options(
        { subject => 1, scope => 1, ttl => 1, quiet => 'flag' }, @_);
    die $USAGE{token} unless defined $slug;

    my $subject = $opt->{subject} // die "--subject is required\n";
    my $scope = $opt->{scope} // '';
    my $ttl = parse_ttl($opt->{ttl} // '1h');

    die "invalid subject: 1 to 200 visible characters\n"
        unless $subject =~ /\A[\x21-\x7e]{1,200}\z/;
    for my $s (split / /, $scope) {
        die "invalid scope \"$s\"\n" unless $s =~ /\A[\x21\x23-\x5b\x5d-\x7e]+\z/;
    }
    $scope = join ' ', grep { length } split / /, $scope;

    my $t = tenant_by_slug($slug);
    die "tenant \"$slug\" is disabled\n" if $t->{state} eq 'disabled';

    my $token = new_secret('gat_live_');
    my $hash = sha256_hex($token);

    my ($row) = sql(<<'SQL', tenant => $t->{id}, subject => $subject, scope => $scope, hash => $hash, ttl => $ttl);
INSERT INTO access_tokens (id, tenant_id, subject, token_hash, scopes, expires_at)
VALUES (gen_random_uuid(), :'tenant', :'subject', :'hash', :'scope',
        now() + make_interval(secs => :'ttl'))
RETURNING id, extract(epoch FROM expires_at)::bigint;
SQL

    my ($id, $exp) = @$row;

    my $r = redis();
    $r->command('HSET', "gate:tok:$hash", tenant => $t->{id}, sub => $subject,
                scope => $scope, exp => $exp, id => $id);
    $r->command('EXPIREAT', "gate:tok:$hash", $exp);

    if ($opt->{quiet}) {
        print "$token\n";
    } else {
        print "token:      $token\n",
              "token_id:   $id\n",
              "tenant:     $t->{slug} ($t->{id})\n",
              "subject:    $subject\n",
              "scope:      $scope\n",
              "expires_at: ", scalar(gmtime $exp), " UTC\n",
              "(shown once: only its SHA-256 is stored)\n";
    }

    return 0;
}

sub token_revoke {
    my ($opt, $id) = options({}, @_);
    die $USAGE{token} unless defined $id;
    die "invalid token id \"$id\"\n"
        unless $id =~ /\A[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}\z/;

    my ($row) = sql(<<'SQL', id => $id);
WITH t AS (SELECT id, token_hash, revoked_at FROM access_tokens WHERE id = :'id'),
     u AS (UPDATE access_tokens SET revoked_at = now()
            WHERE id = :'id' AND revoked_at IS NULL)
SELECT token_hash FROM t;
SQL
    die "no token \"$id\"\n" unless $row;

    my $r = redis();
    $r->command('DEL', "gate:tok:$row->[0]");
    $r->command('PUBLISH', 'gate:invalidate', $row->[0]);

    print "token $id revoked\n";
    return 0;
}

1;
