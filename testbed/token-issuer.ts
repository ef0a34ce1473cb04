// A Docker-Hub-like token server for tests. The real registry (`auth.token`) verifies the JWTs it
// issues against the self-signed certificate in `certPath`; only the issuer is a fixture.
//
// Protocol (distribution's docs/spec/auth/token.md and oauth.md):
//   GET  /token?service=S&scope=repository:NAME:pull,push&scope=…[&account=U]   Basic auth optional
//   POST /token  (form: grant_type=password|refresh_token, service, scope, username, password, …)
// Answer: {token, access_token, expires_in, issued_at} (+ refresh_token for offline POSTs).
import { execFile } from 'node:child_process';
import { createPrivateKey, randomBytes, randomUUID, sign, X509Certificate, type KeyObject } from 'node:crypto';
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { createServer, type IncomingMessage, type ServerResponse } from 'node:http';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { closeServer, listenOnLoopback } from './ports.ts';

export interface Credentials {
  username: string;
  password: string;
}

/** One entry of a token's `access` claim, and one parsed `scope` parameter. */
export interface Access {
  type: string;
  name: string;
  actions: string[];
}

/**
 * Decides which of the requested actions a caller is granted (a subset of `requested.actions`).
 * `user` is undefined for anonymous requests.
 */
export type AccessPolicy = (user: string | undefined, requested: Access) => string[];

/** Authenticated users get everything they ask for; anonymous callers get a token granting nothing. */
export const grantUsersEverything: AccessPolicy = (user, requested) => (user === undefined ? [] : requested.actions);

export interface TokenIssuerOptions {
  /** `aud` of the tokens and the registry's `auth.token.service`. Default 'test-registry'. */
  service?: string;
  /** `iss` of the tokens. Default 'test-issuer'. */
  issuer?: string;
  /** Accepted users. Default: one generated user. */
  users?: Credentials[];
  policy?: AccessPolicy;
  /** Real validity of issued tokens (`exp - iat`). Default 300. */
  lifetimeSeconds?: number;
}

export interface TokenRequest {
  method: 'GET' | 'POST';
  /** Whether the caller presented credentials at all (valid or not). */
  authenticated: boolean;
  /** The user the credentials were valid for. */
  user?: string;
  account?: string;
  service?: string;
  grantType?: string;
  /** Scope strings exactly as requested, e.g. 'repository:library/alpine:pull,push'. */
  scopes: string[];
  granted: Access[];
  status: number;
}

export interface TokenIssuer {
  /** Base URL, e.g. http://127.0.0.1:PORT */
  url: string;
  /** `${url}/token`: the registry's `auth.token.realm`. */
  realm: string;
  service: string;
  issuer: string;
  /** PEM certificate of the signing key: the registry's `auth.token.rootcertbundle`. */
  certPath: string;
  /** The first user. */
  credentials: Credentials;
  /** Every request to /token, in order. Tests may clear it (`requests.length = 0`). */
  requests: TokenRequest[];
  /**
   * Mutable. Validity of tokens issued from now on; negative issues already-expired tokens. The
   * registry allows 60 s of clock skew past `exp`: -70 is refused at once, -50 still works for
   * about 10 s (a token that expires during a test).
   */
  lifetimeSeconds: number;
  /** Mutable. `expires_in` announced to clients; defaults to the real lifetime (or 60 if that is < 60). */
  advertisedExpiresIn: number | undefined;
  /** Mutable. */
  policy: AccessPolicy;
  addUser(credentials: Credentials): void;
  /** Signs a token directly, bypassing /token. */
  mint(access: Access[], options?: { subject?: string; lifetimeSeconds?: number; audience?: string }): string;
  stop(): Promise<void>;
}

const execFileAsync = promisify(execFile);

export async function startTokenIssuer(options: TokenIssuerOptions = {}): Promise<TokenIssuer> {
  const dir = await mkdtemp(join(tmpdir(), 'token-issuer-'));
  const keyPath = join(dir, 'key.pem');
  const certPath = join(dir, 'cert.pem');
  // node:crypto can generate keys but not certificates; the registry wants a certificate bundle.
  await execFileAsync('openssl', [
    'req',
    '-x509',
    '-newkey',
    'rsa:2048',
    '-nodes',
    '-keyout',
    keyPath,
    '-out',
    certPath,
    '-subj',
    '/CN=test-token-issuer',
    '-days',
    '2',
  ]);
  const key = createPrivateKey(await readFile(keyPath));
  // The registry trusts a token whose x5c chain ends in rootcertbundle; the leaf here is the root.
  const x5c = [new X509Certificate(await readFile(certPath)).raw.toString('base64')];

  const users = new Map<string, string>();
  for (const user of options.users ?? [{ username: 'issuer-user', password: randomBytes(12).toString('hex') }]) {
    users.set(user.username, user.password);
  }
  const [first] = users;
  const refreshTokens = new Map<string, string>(); // refresh token → user

  const server = createServer((req, res) => {
    handle(req, res).catch((error: unknown) => {
      if (!res.headersSent) respond(res, 500, { details: String(error) });
      else res.destroy();
    });
  });

  const issuer: TokenIssuer = {
    url: '',
    realm: '',
    service: options.service ?? 'test-registry',
    issuer: options.issuer ?? 'test-issuer',
    certPath,
    credentials: { username: first![0], password: first![1] },
    requests: [],
    lifetimeSeconds: options.lifetimeSeconds ?? 300,
    advertisedExpiresIn: undefined,
    policy: options.policy ?? grantUsersEverything,
    addUser(credentials) {
      users.set(credentials.username, credentials.password);
    },
    mint(access, mintOptions = {}) {
      return signJwt(key, x5c, {
        iss: issuer.issuer,
        sub: mintOptions.subject ?? '',
        aud: mintOptions.audience ?? issuer.service,
        lifetimeSeconds: mintOptions.lifetimeSeconds ?? issuer.lifetimeSeconds,
        access,
      });
    },
    async stop() {
      await closeServer(server);
      await rm(dir, { recursive: true, force: true });
    },
  };

  async function handle(req: IncomingMessage, res: ServerResponse): Promise<void> {
    const url = new URL(req.url ?? '/', 'http://issuer');
    if (url.pathname !== '/token' || (req.method !== 'GET' && req.method !== 'POST')) {
      respond(res, 404, { details: 'not found' });
      return;
    }
    const record: TokenRequest = { method: req.method, authenticated: false, scopes: [], granted: [], status: 0 };
    issuer.requests.push(record);
    const finish = (status: number, body: object): void => {
      record.status = status;
      respond(res, status, body);
    };

    let user: string | undefined;
    let offline = false;
    let params: URLSearchParams;
    if (req.method === 'GET') {
      params = url.searchParams;
      const basic = parseBasic(req.headers.authorization);
      if (basic) {
        record.authenticated = true;
        if (users.get(basic.username) !== basic.password) return finish(401, { details: 'incorrect username or password' });
        user = basic.username;
      }
    } else {
      params = new URLSearchParams(await readBody(req));
      const grantType = params.get('grant_type') ?? '';
      record.grantType = grantType;
      record.authenticated = true;
      offline = params.get('access_type') === 'offline';
      if (grantType === 'password') {
        const username = params.get('username') ?? '';
        if (users.get(username) !== params.get('password')) return finish(401, { details: 'incorrect username or password' });
        user = username;
      } else if (grantType === 'refresh_token') {
        user = refreshTokens.get(params.get('refresh_token') ?? '');
        if (user === undefined) return finish(401, { details: 'invalid refresh token' });
      } else {
        return finish(400, { details: `unsupported grant_type ${JSON.stringify(grantType)}` });
      }
    }
    record.user = user;
    record.account = params.get('account') ?? undefined;
    record.service = params.get('service') ?? undefined;
    // GET repeats `scope`; the OAuth2 form separates scopes with spaces. Accept both everywhere.
    record.scopes = params
      .getAll('scope')
      .flatMap((s) => s.split(' '))
      .filter((s) => s !== '');
    if (record.service !== undefined && record.service !== issuer.service) {
      return finish(400, { details: `unknown service ${record.service}` });
    }

    record.granted = grant(record.scopes, (requested) => issuer.policy(user, requested));
    const issuedAt = new Date();
    const token = issuer.mint(record.granted, { subject: user ?? '' });
    const expiresIn = issuer.advertisedExpiresIn ?? Math.max(issuer.lifetimeSeconds, 60);
    const body: Record<string, unknown> = {
      token,
      access_token: token,
      expires_in: expiresIn,
      issued_at: issuedAt.toISOString(),
    };
    if (req.method === 'POST') body.scope = record.scopes.join(' ');
    if (offline && user !== undefined) {
      const refresh = randomBytes(16).toString('hex');
      refreshTokens.set(refresh, user);
      body.refresh_token = refresh;
    }
    finish(200, body);
  }

  issuer.url = `http://127.0.0.1:${await listenOnLoopback(server)}`;
  issuer.realm = `${issuer.url}/token`;
  return issuer;
}

/** Parses 'repository:library/alpine:pull,push' (the name may contain ':' before the last one). */
export function parseScope(scope: string): Access | undefined {
  const firstColon = scope.indexOf(':');
  const lastColon = scope.lastIndexOf(':');
  if (firstColon <= 0 || lastColon === firstColon) return undefined;
  return {
    type: scope.slice(0, firstColon),
    name: scope.slice(firstColon + 1, lastColon),
    actions: scope
      .slice(lastColon + 1)
      .split(',')
      .filter((a) => a !== ''),
  };
}

/** Merges the requested scopes per resource and keeps what the policy allows. */
function grant(scopes: string[], allow: (requested: Access) => string[]): Access[] {
  const merged = new Map<string, Access>();
  for (const scope of scopes) {
    const access = parseScope(scope);
    if (!access) continue;
    const key = `${access.type}:${access.name}`;
    const entry = merged.get(key) ?? { ...access, actions: [] };
    entry.actions = [...new Set([...entry.actions, ...access.actions])];
    merged.set(key, entry);
  }
  const granted: Access[] = [];
  for (const requested of merged.values()) {
    const allowed = allow(requested);
    const actions = requested.actions.filter((a) => allowed.includes(a) || allowed.includes('*'));
    if (actions.length > 0) granted.push({ ...requested, actions });
  }
  return granted;
}

function signJwt(
  key: KeyObject,
  x5c: string[],
  claims: { iss: string; sub: string; aud: string; lifetimeSeconds: number; access: Access[] },
): string {
  const now = Math.floor(Date.now() / 1000);
  const exp = now + claims.lifetimeSeconds;
  const header = { alg: 'RS256', typ: 'JWT', x5c };
  const payload = {
    iss: claims.iss,
    sub: claims.sub,
    aud: claims.aud,
    exp,
    // An expired token must not also be "not yet valid": keep nbf ≤ exp.
    nbf: Math.min(now, exp),
    iat: now,
    jti: randomUUID(),
    access: claims.access,
  };
  const input = `${base64url(JSON.stringify(header))}.${base64url(JSON.stringify(payload))}`;
  const signature = sign('sha256', Buffer.from(input), key);
  return `${input}.${base64url(signature)}`;
}

function base64url(data: string | Buffer): string {
  return Buffer.from(data).toString('base64url');
}

function parseBasic(header: string | undefined): Credentials | undefined {
  const match = /^Basic\s+(\S+)$/i.exec(header ?? '');
  if (!match) return undefined;
  const decoded = Buffer.from(match[1]!, 'base64').toString('utf8');
  const colon = decoded.indexOf(':');
  if (colon < 0) return undefined;
  return { username: decoded.slice(0, colon), password: decoded.slice(colon + 1) };
}

async function readBody(req: IncomingMessage): Promise<string> {
  const chunks: Buffer[] = [];
  for await (const chunk of req) chunks.push(chunk as Buffer);
  return Buffer.concat(chunks).toString('utf8');
}

function respond(res: ServerResponse, status: number, body: object): void {
  const text = JSON.stringify(body);
  const headers: Record<string, string> = { 'content-type': 'application/json' };
  if (status === 401) headers['www-authenticate'] = 'Basic realm="test-token-issuer"';
  res.writeHead(status, headers).end(text);
}
