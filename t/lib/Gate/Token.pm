package Gate::Token;

# Credentials for tests, made the way DESIGN.md section 2 defines them, and
# token records written to Redis the way the token API will write them.

use strict;
use warnings;

use Compress::Zlib qw(crc32);
use Digest::SHA qw(sha256_hex);
use Exporter 'import';

our @EXPORT_OK = qw(new_secret with_checksum sha256_hex store_token);

sub with_checksum {
    my ($body) = @_;
    return $body . sprintf('%08x', crc32($body));
}

sub new_secret {
    my ($prefix) = @_;
    return with_checksum(($prefix // 'gat_live_')
                         . join '', map { sprintf '%02x', int rand 256 } 1 .. 28);
}

# store_token($t, $redis_name, tenant => ..., sub => ..., scope => ...,
#             exp => unix seconds, id => ...) returns the token.
sub store_token {
    my ($t, $redis, %rec) = @_;
    my $token = new_secret('gat_live_');
    my $hash = sha256_hex($token);

    $rec{exp} //= time + 3600;
    $rec{id} //= sprintf '%08x-0000-4000-8000-%012x', int rand 2**31, int rand 2**31;

    $t->redis($redis, 'HSET', "gate:tok:$hash", map { $_ => $rec{$_} }
              grep { defined $rec{$_} } qw(tenant sub scope exp id));
    return wantarray ? ($token, $hash, $rec{id}) : $token;
}

1;
