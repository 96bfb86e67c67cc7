package Gate::Flows;

# The nginx configuration of an end-user front (tenant by header), shared by
# the flow tests: Kratos' public API behind Gate's flow checks, Gate's hook
# endpoints for the suite's Kratos, and a tenant app behind sessions.

use strict;
use warnings;

use Exporter 'import';
our @EXPORT_OK = qw(front_conf);

sub front_conf {
    my (%opt) = @_;
    my $conninfo = $opt{conninfo} or die 'conninfo';
    my $admin = $opt{admin_port} // $ENV{GATE_TEST_KRATOS_ADMIN_PORT};
    my $public = $opt{public_port} // $ENV{GATE_TEST_KRATOS_PUBLIC_PORT};
    my $tenant = $opt{tenant} // 'header X-Gate-Tenant';
    my $extra = $opt{extra} // '';

    return <<"EOF";
%%GLOBALS%%
http {
    %%HTTP_GLOBALS%%
    gate_redis 127.0.0.1:%%REDIS_PORT_r1%% timeout=500ms;
    gate_postgres "$conninfo" pool=4 timeout=1s;
    gate_cache zone=gate:1m ttl=30s;
    gate_kratos_admin /_gate/kratos-admin;
    gate_kratos_public /_gate/kratos-public;
    gate_hook_secret gate-local-hook-secret;

    upstream kratos_public {
        server 127.0.0.1:$public;
    }

    server {
        listen 127.0.0.1:%%PORT_HTTP%%;
        listen 127.0.0.1:%%ENV_GATE_TEST_HOOK_PORT%%;
        default_type application/json;

        location /_gate/kratos-admin/ {
            internal;
            proxy_pass http://127.0.0.1:$admin/;
            proxy_pass_request_headers off;
            proxy_set_header Content-Type application/json;
            proxy_set_header Accept application/json;
            subrequest_output_buffer_size 1m;
        }

        location /_gate/kratos-public/ {
            internal;
            proxy_set_header Host \$host;
            proxy_pass http://kratos_public/;
            proxy_set_header X-Forwarded-Proto \$scheme;
            proxy_connect_timeout 1s;
            proxy_read_timeout 5s;
            subrequest_output_buffer_size 256k;
        }

        location /internal/hooks/registration { gate_hook registration; }
        location /internal/hooks/registered   { gate_hook registered; }
        location /internal/hooks/login        { gate_hook login; }

        location ~ ^/self-service/(login|registration|recovery|verification)/(api|browser)\$ {
            gate_tenant $tenant;
            gate_flow init;
        }

        location ~ ^/self-service/settings/(api|browser)\$ {
            gate_tenant $tenant;
            gate_auth session;
            gate_flow init;
        }

        location ~ ^/self-service/(login|registration|recovery|verification)(/flows)?\$ {
            gate_tenant $tenant;
            gate_flow check;
            proxy_set_header Host \$host;
            proxy_pass http://kratos_public;
        }

        # a settings flow is bound to its session's identity by Kratos,
        # and the session to its tenant by Gate: no flow record needed
        location ~ ^/self-service/settings(/flows)?\$ {
            gate_tenant $tenant;
            gate_auth session;
            gate_flow check;
            proxy_set_header Host \$host;
            proxy_pass http://kratos_public;
        }

        location = /self-service/logout/api {
            gate_api logout;
        }

        location = /sessions/whoami {
            gate_tenant $tenant;
            gate_auth session;
            proxy_set_header Host \$host;
            proxy_pass http://kratos_public;
        }

        location /app/ {
            gate_tenant $tenant;
            gate_auth session;
            proxy_pass http://127.0.0.1:%%PORT_APP%%;
        }

$extra
        location / {
            return 404 '{"error":{"code":"not_found","message":"Not found."}}';
        }
    }
}
EOF
}

1;
