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
    key => <<'EOT',
usage: gatectl key create SLUG [--expires-in 90d] [--quiet]
       gatectl key list SLUG
       gatectl key revoke KEY_ID
       gatectl key rotate KEY_ID [--overlap 24h] [--quiet]
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

# A revoked credential's Redis record becomes a tombstone rather than
# disappearing: nginx writes records it read from PostgreSQL back to Redis
# only where nothing is, so a lookup racing the revocation cannot undo it.
my $TOMBSTONE = <<'LUA';
redis.call('DEL', KEYS[1])
redis.call('HSET', KEYS[1], 'revoked', '1')
redis.call('EXPIRE', KEYS[1], ARGV[1])
return 1
LUA

sub tombstone {
    my ($r, $key, $ttl) = @_;
    $ttl = 86400 if !$ttl || $ttl > 86400;
    $ttl = 60 if $ttl < 60;
    $r->command('EVAL', $TOMBSTONE, 1, $key, $ttl);
}

# nginx caches tenant lookups by slug and by id (gate:tnt:{sha256}).  A
# disabled tenant's records are written, not deleted: nginx writes back only
# where nothing is, so a lookup racing the disable cannot bring back an
# "active" copy.  Enabling deletes them (a race then errs on "disabled").
sub forget_tenant {
    my ($r, $t, $disabled) = @_;
    for my $name ($t->{slug}, $t->{id}) {
        my $key = 'gate:tnt:' . sha256_hex($name);
        if ($disabled) {
            $r->command('HSET', $key, tenant => $t->{id}, sub => 'disabled', scope => $t->{slug},
                        exp => time + 300, id => $t->{id});
            $r->command('EXPIRE', $key, 300);
        } else {
            $r->command('DEL', $key);
        }
    }
}

# A slug names one tenant wherever an id is accepted too, so it may not be
# shaped like an id; nor end in "-" (a host name label may not).
sub valid_slug {
    my ($slug) = @_;
    return $slug =~ /\A[a-z0-9][a-z0-9-]{0,61}[a-z0-9]\z/
        && $slug !~ /\A[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}\z/;
}

my $SLUG_RULE = 'use 2-63 of a-z, 0-9 and -, starting and ending with a letter or digit, not shaped like a tenant id';

sub tenant_by_slug {
    my ($slug) = @_;
    die "invalid slug \"$slug\": $SLUG_RULE\n" unless valid_slug($slug);

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

    die "invalid slug \"$slug\": $SLUG_RULE\n" unless valid_slug($slug);
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

    my @rows = sql(<<'SQL', id => $t->{id});
BEGIN;
UPDATE tenants SET disabled_at = now()
 WHERE id = :'id' AND disabled_at IS NULL;
UPDATE access_tokens SET revoked_at = now()
 WHERE tenant_id = :'id' AND revoked_at IS NULL
RETURNING 'tok', token_hash,
          extract(epoch FROM expires_at - now())::bigint;
SELECT 'key', key_hash, 86400 FROM api_keys
 WHERE tenant_id = :'id' AND revoked_at IS NULL;
COMMIT;
SQL

    my $r = redis();
    tombstone($r, "gate:$_->[0]:$_->[1]", $_->[2]) for @rows;
    forget_tenant($r, $t, 1);
    $r->command('PUBLISH', 'gate:invalidate', "tenant:$t->{id}");

    print "tenant $slug disabled\n";
    return 0;
}

sub tenant_enable {
    my ($opt, $slug) = options({}, @_);
    die $USAGE{tenant} unless defined $slug;
    my $t = tenant_by_slug($slug);

    my @keys = sql(<<'SQL', id => $t->{id});
UPDATE tenants SET disabled_at = NULL WHERE id = :'id';
SELECT key_hash FROM api_keys WHERE tenant_id = :'id' AND revoked_at IS NULL;
SQL

    # the keys' tombstones from the disable go; their truth is PostgreSQL
    my $r = redis();
    $r->command('DEL', map { "gate:key:$_->[0]" } @keys) if @keys;
    forget_tenant($r, $t, 0);
    $r->command('PUBLISH', 'gate:invalidate', "tenant:$t->{id}");

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
WITH t AS (SELECT id, token_hash, expires_at FROM access_tokens WHERE id = :'id'),
     u AS (UPDATE access_tokens SET revoked_at = now()
            WHERE id = :'id' AND revoked_at IS NULL)
SELECT token_hash, greatest(extract(epoch FROM expires_at - now())::bigint, 0) FROM t;
SQL
    die "no token \"$id\"\n" unless $row;

    my $r = redis();
    tombstone($r, "gate:tok:$row->[0]", $row->[1]);
    $r->command('PUBLISH', 'gate:invalidate', $row->[0]);

    print "token $id revoked\n";
    return 0;
}

sub valid_uuid {
    return $_[0] =~ /\A[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}\z/;
}

# Inserts a new secret key for a tenant; returns (key, id).
sub insert_key {
    my ($tenant_id, $expires_in) = @_;
    my $key = new_secret('gate_live_sk_');
    my $hash = sha256_hex($key);
    my $display = substr($key, 0, length('gate_live_sk_') + 8) . '...';

    my ($row) = sql(<<'SQL', tenant => $tenant_id, hash => $hash, display => $display, ttl => $expires_in // '');
INSERT INTO api_keys (id, tenant_id, key_hash, display, expires_at)
VALUES (gen_random_uuid(), :'tenant', :'hash', :'display',
        CASE WHEN :'ttl' = '' THEN NULL
             ELSE now() + make_interval(secs => nullif(:'ttl', '')::double precision) END)
RETURNING id;
SQL
    return ($key, $row->[0]);
}

sub print_key {
    my ($quiet, $key, $id, $slug, $extra) = @_;
    if ($quiet) {
        print "$key\n";
        return;
    }
    print "key:    $key\n",
          "key_id: $id\n",
          "tenant: $slug\n",
          ($extra // ''),
          "(shown once: only its SHA-256 is stored)\n";
}

sub key_create {
    my ($opt, $slug) = options({ 'expires-in' => 1, quiet => 'flag' }, @_);
    die $USAGE{key} unless defined $slug;
    my $ttl = defined $opt->{'expires-in'} ? parse_ttl($opt->{'expires-in'}) : undef;

    my $t = tenant_by_slug($slug);
    die "tenant \"$slug\" is disabled\n" if $t->{state} eq 'disabled';

    my ($key, $id) = insert_key($t->{id}, $ttl);
    print_key($opt->{quiet}, $key, $id, $slug);
    return 0;
}

sub key_list {
    my ($opt, $slug) = options({}, @_);
    die $USAGE{key} unless defined $slug;
    my $t = tenant_by_slug($slug);

    my @rows = sql(<<'SQL', id => $t->{id});
SELECT id, display,
       to_char(created_at AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI'),
       coalesce(to_char(last_used_at AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI'), '-'),
       CASE WHEN revoked_at IS NOT NULL THEN 'revoked'
            WHEN expires_at IS NOT NULL AND expires_at <= now() THEN 'expired'
            WHEN expires_at IS NOT NULL
                 THEN 'expires ' || to_char(expires_at AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI')
            ELSE 'active' END
  FROM api_keys WHERE tenant_id = :'id' ORDER BY created_at, id;
SQL
    printf "%-36s  %-24s  %-16s  %-16s  %s\n", 'ID', 'KEY', 'CREATED', 'LAST USED', 'STATE';
    printf "%-36s  %-24s  %-16s  %-16s  %s\n", @$_ for @rows;
    return 0;
}

sub key_revoke {
    my ($opt, $id) = options({}, @_);
    die $USAGE{key} unless defined $id;
    die "invalid key id \"$id\"\n" unless valid_uuid($id);

    my ($row) = sql(<<'SQL', id => $id);
WITH k AS (SELECT id, key_hash FROM api_keys WHERE id = :'id'),
     u AS (UPDATE api_keys SET revoked_at = now()
            WHERE id = :'id' AND revoked_at IS NULL)
SELECT key_hash FROM k;
SQL
    die "no key \"$id\"\n" unless $row;

    my $r = redis();
    tombstone($r, "gate:key:$row->[0]", 86400);
    $r->command('PUBLISH', 'gate:invalidate', $row->[0]);

    print "key $id revoked\n";
    return 0;
}

# A new key now; the old one keeps working until the overlap ends.
sub key_rotate {
    my ($opt, $id) = options({ overlap => 1, quiet => 'flag' }, @_);
    die $USAGE{key} unless defined $id;
    die "invalid key id \"$id\"\n" unless valid_uuid($id);
    my $overlap = defined $opt->{overlap} && $opt->{overlap} =~ /\A0+[smhd]?\z/
                  ? 0 : parse_ttl($opt->{overlap} // '24h');

    my ($old) = sql(<<'SQL', id => $id);
SELECT k.tenant_id, k.key_hash, t.slug,
       (k.revoked_at IS NOT NULL OR (k.expires_at IS NOT NULL AND k.expires_at <= now()))
  FROM api_keys k JOIN tenants t ON t.id = k.tenant_id WHERE k.id = :'id';
SQL
    die "no key \"$id\"\n" unless $old;
    die "key \"$id\" is revoked or expired: create a new one instead\n" if $old->[3] eq 't';

    my ($key, $new_id) = insert_key($old->[0], undef);

    sql(<<'SQL', id => $id, overlap => $overlap);
UPDATE api_keys
   SET expires_at = LEAST(coalesce(expires_at, 'infinity'),
                          now() + make_interval(secs => :'overlap'))
 WHERE id = :'id';
SQL

    # the old record carries the old end: drop it everywhere, PostgreSQL
    # gives the new one on the next lookup
    my $r = redis();
    if ($overlap == 0) {
        tombstone($r, "gate:key:$old->[1]", 86400);
    } else {
        $r->command('DEL', "gate:key:$old->[1]");
    }
    $r->command('PUBLISH', 'gate:invalidate', $old->[1]);

    print_key($opt->{quiet}, $key, $new_id, $old->[2],
              "old key $id works until " . ($overlap ? "$overlap seconds from now" : 'now') . "\n");
    return 0;
}

1;
