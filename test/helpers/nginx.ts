/**
 * Starts Debian's nginx as a child process serving a directory on
 * 127.0.0.1: generated config in a temp dir (daemon off, pid, logs and all
 * temp paths inside it), a random free port, optional limit_rate, optional
 * TLS with HTTP/2 (a certificate made by makeCert with openssl), optional
 * max_ranges. Missing nginx is an error, not a skip: CI installs it
 * (apt-get install -y nginx).
 */
import { createHash, createPublicKey } from 'node:crypto';
import { execFileSync } from 'node:child_process';
import { spawn, type ChildProcess } from 'node:child_process';
import { accessSync, constants, readFileSync } from 'node:fs';
import { chmod, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { createServer, connect } from 'node:net';
import { tmpdir } from 'node:os';
import { delimiter, join } from 'node:path';

export interface NginxOptions {
  /** Directory served at `/`. Must be readable by nginx's worker user (nobody when run as root). */
  root: string;
  /** nginx `limit_rate` per connection, e.g. '20m' (bytes/s, nginx units). */
  limitRate?: string;
  /** Serve https with HTTP/2 (ALPN h2, http/1.1 still offered) with this certificate. */
  tls?: Cert;
  /** With `tls`: offer HTTP/2 (default true); false serves HTTP/1.1 only, as a CDN without HTTP/2 does. */
  http2?: boolean;
  /** nginx `max_ranges`: 1 answers multi-range requests with the whole file (200); 0 ignores Range. */
  maxRanges?: number;
  /** Response headers added to every answer (`add_header ... always`), e.g. COOP/COEP for a cross-origin-isolated page. */
  headers?: Record<string, string>;
  /**
   * CORS for reads from other origins: Range and If-Range allowed (preflight
   * answered), Content-Range and ETag exposed, Resource Timing open
   * (Timing-Allow-Origin). 'credentials': credentialed requests allowed too
   * (the caller's Origin echoed, Access-Control-Allow-Credentials: true).
   */
  cors?: boolean | 'credentials';
  /** Log every request's protocol, status and Range (accessLog()): what the server saw, e.g. HTTP/2.0. */
  accessLog?: boolean;
}

/** A self-signed certificate for 127.0.0.1 made by openssl in a test's temp dir. */
export interface Cert {
  certPath: string;
  keyPath: string;
  /** The certificate (PEM): what a client trusts (NodeHttpSource `ca`). */
  pem: string;
  /** base64 SHA-256 of its public key (SubjectPublicKeyInfo): Chromium's --ignore-certificate-errors-spki-list. */
  spki: string;
}

/** Makes a P-256 self-signed certificate for IP 127.0.0.1 (valid a day) in `dir` with the system openssl. */
export function makeCert(dir: string): Cert {
  const certPath = join(dir, 'cert.pem');
  const keyPath = join(dir, 'key.pem');
  execFileSync('openssl', ['req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes', '-keyout', keyPath, '-out', certPath, '-days', '1', '-subj', '/CN=127.0.0.1', '-addext', 'subjectAltName=IP:127.0.0.1'], { stdio: 'pipe' });
  const pem = readFileSync(certPath, 'utf8');
  const spki = createHash('sha256').update(createPublicKey(pem).export({ type: 'spki', format: 'der' })).digest('base64');
  return { certPath, keyPath, pem, spki };
}

export interface Nginx {
  readonly port: number;
  /** `http://127.0.0.1:port` */
  readonly origin: string;
  url(path: string): string;
  /** The error log so far (for assertion messages). */
  errorLog(): Promise<string>;
  /** With `accessLog`: one line per request so far, `<protocol> <status> <uri> <range> <method> <connection>` (e.g. `HTTP/2.0 206 /m.flm bytes=0-0 GET 3`; `-` for none; connection: nginx's serial number of the connection). */
  accessLog(): Promise<string[]>;
  stop(): Promise<void>;
}

export function findNginx(): string {
  const dirs = [...(process.env.PATH ?? '').split(delimiter), '/usr/sbin', '/usr/local/sbin', '/usr/local/nginx/sbin'];
  for (const d of dirs) {
    if (!d) continue;
    const p = join(d, 'nginx');
    try {
      accessSync(p, constants.X_OK);
      return p;
    } catch {
      // keep looking
    }
  }
  throw new Error('nginx is not installed: run `apt-get update && apt-get install -y nginx` (the HTTP source tests need it)');
}

async function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const s = createServer();
    s.once('error', reject);
    s.listen(0, '127.0.0.1', () => {
      const port = (s.address() as { port: number }).port;
      s.close(() => resolve(port));
    });
  });
}

function canConnect(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const c = connect(port, '127.0.0.1');
    c.once('connect', () => {
      c.destroy();
      resolve(true);
    });
    c.once('error', () => resolve(false));
  });
}

const CORS = { 'Access-Control-Allow-Origin': '*', 'Access-Control-Expose-Headers': 'Content-Range, Content-Length, ETag, Last-Modified', 'Timing-Allow-Origin': '*', 'Cross-Origin-Resource-Policy': 'cross-origin' };
const PREFLIGHT = { 'Access-Control-Allow-Origin': '*', 'Access-Control-Allow-Headers': 'range, if-range', 'Access-Control-Max-Age': '86400' };

/** Credentialed CORS: `*` is not allowed there, so the request's Origin is echoed (an nginx variable, left unquoted). */
const CREDENTIALED = { 'Access-Control-Allow-Origin': '$http_origin', 'Access-Control-Allow-Credentials': 'true', Vary: 'Origin' };
const corsHeaders = (o: NginxOptions, base: Record<string, string>) => (o.cors === 'credentials' ? { ...base, ...CREDENTIALED } : base);
const addHeaders = (h: Record<string, string>) => Object.entries(h).map(([k, v]) => `add_header ${k} ${v === '$http_origin' ? v : q(v)} always;`).join(' ');

/** A path as an nginx string (quoted: paths may hold spaces or semicolons). */
const q = (path: string) => `"${path.replace(/["\\$]/g, (c) => `\\${c}`)}"`;

function config(dir: string, port: number, o: NginxOptions): string {
  const asRoot = process.getuid?.() === 0;
  return `
daemon off;
master_process on;
worker_processes 1;
${asRoot ? 'user nobody nogroup;' : ''}
pid ${q(join(dir, 'nginx.pid'))};
error_log ${q(join(dir, 'error.log'))} warn;
events { worker_connections 512; }
http {
  ${o.accessLog ? `log_format flashlm '$server_protocol $status $uri $http_range $request_method $connection'; access_log ${q(join(dir, 'access.log'))} flashlm;` : 'access_log off;'}
  client_body_temp_path ${q(join(dir, 'client_body'))};
  proxy_temp_path ${q(join(dir, 'proxy'))};
  fastcgi_temp_path ${q(join(dir, 'fastcgi'))};
  uwsgi_temp_path ${q(join(dir, 'uwsgi'))};
  scgi_temp_path ${q(join(dir, 'scgi'))};
  types { text/html html; text/javascript js mjs; application/wasm wasm; }
  default_type application/octet-stream;
  sendfile on;
  tcp_nopush on;
  tcp_nodelay on;
  keepalive_timeout 60s;
  keepalive_requests 1000000;
  server {
    listen 127.0.0.1:${port}${o.tls ? ` ssl${o.http2 === false ? '' : ' http2'}` : ''};
    ${o.tls ? `ssl_certificate ${q(o.tls.certPath)}; ssl_certificate_key ${q(o.tls.keyPath)};` : ''}
    root ${q(o.root)};
    ${o.limitRate ? `limit_rate ${o.limitRate};` : ''}
    ${o.maxRanges !== undefined ? `max_ranges ${o.maxRanges};` : ''}
    ${addHeaders({ ...o.headers, ...(o.cors ? corsHeaders(o, CORS) : {}) })}
    ${o.cors ? `location / { if ($request_method = OPTIONS) { ${addHeaders(corsHeaders(o, PREFLIGHT))} return 204; } }` : ''}
  }
}
`;
}

/** Starts nginx; retries on a port race. Resolves once it accepts connections. */
export async function startNginx(options: NginxOptions): Promise<Nginx> {
  const bin = findNginx();
  let lastError = '';
  for (let tryNo = 0; tryNo < 5; tryNo++) {
    const dir = await mkdtemp(join(tmpdir(), 'flashlm-nginx-'));
    await chmod(dir, 0o755);
    const port = await freePort();
    const conf = join(dir, 'nginx.conf');
    await writeFile(conf, config(dir, port, options));
    // -e: error log before the config is read (else /var/log/nginx); -p: prefix for relative paths.
    const child: ChildProcess = spawn(bin, ['-p', dir, '-e', join(dir, 'error.log'), '-c', conf], { stdio: ['ignore', 'ignore', 'pipe'] });
    let stderr = '';
    child.stderr!.on('data', (d: Buffer) => (stderr += d.toString()));
    let exited = false;
    const exitP = new Promise<void>((resolve) => child.once('exit', () => ((exited = true), resolve())));
    child.once('error', (e) => (stderr += String(e)));
    const deadline = Date.now() + 5000;
    let up = false;
    while (!exited && Date.now() < deadline) {
      if (await canConnect(port)) {
        up = true;
        break;
      }
      await new Promise((r) => setTimeout(r, 20));
    }
    const log = () => readFile(join(dir, 'error.log'), 'utf8').catch(() => '');
    if (up && !exited) {
      const scheme = options.tls ? 'https' : 'http';
      return {
        port,
        origin: `${scheme}://127.0.0.1:${port}`,
        url: (path: string) => `${scheme}://127.0.0.1:${port}/${path.replace(/^\//, '')}`,
        errorLog: log,
        accessLog: async () => (await readFile(join(dir, 'access.log'), 'utf8').catch(() => '')).split('\n').filter(Boolean),
        async stop() {
          if (!exited) {
            child.kill('SIGTERM'); // fast shutdown: does not wait for keep-alive connections
            const t = setTimeout(() => child.kill('SIGKILL'), 3000);
            await exitP;
            clearTimeout(t);
          }
          await rm(dir, { recursive: true, force: true });
        },
      };
    }
    if (!exited) child.kill('SIGKILL');
    await exitP;
    lastError = `${stderr}\n${await log()}`;
    await rm(dir, { recursive: true, force: true });
    if (!/Address already in use/i.test(lastError)) break;
  }
  throw new Error(`nginx did not start: ${lastError.trim()}`);
}
