// Starts a real CNCF distribution registry (Debian's `docker-registry`, 2.8) on loopback with
// filesystem storage in a temporary folder, anonymous or behind htpasswd or token auth.
import { spawn, type ChildProcess } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { once } from 'node:events';
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { startTokenIssuer, type Credentials, type TokenIssuer, type TokenIssuerOptions } from './token-issuer.ts';
import { freePort } from './ports.ts';
import { diesWithThisProcess, stopChild } from './processes.ts';

export type { Credentials } from './token-issuer.ts';

export interface StartRegistryOptions {
  auth?: 'none' | 'htpasswd' | 'token';
  /** htpasswd: the user to create. Default: a generated user and password. */
  credentials?: Credentials;
  /** token: the issuer to trust. Default: one started for this registry and stopped with it. */
  issuer?: TokenIssuer;
  /** token: options for the issuer started when `issuer` is not given. */
  issuerOptions?: TokenIssuerOptions;
  /** Accept manifests whose layers carry `urls` (foreign / non-distributable layers). */
  allowForeignUrls?: boolean;
}

export interface Registry {
  /** '127.0.0.1:PORT', the form used in image references. */
  host: string;
  /** 'http://127.0.0.1:PORT' */
  url: string;
  /** Filesystem storage root (blobs live under docker/registry/v2/blobs). */
  storageDir: string;
  auth: 'none' | 'htpasswd' | 'token';
  /** htpasswd: the user; token: the issuer's first user. */
  credentials?: Credentials;
  issuer?: TokenIssuer;
  stop(): Promise<void>;
  /** Everything the registry printed so far (its log is on stderr, one line per event). */
  logs(): string;
}

const MAX_LOG_CHARS = 4 * 1024 * 1024;

export async function startRegistry(options: StartRegistryOptions = {}): Promise<Registry> {
  const auth = options.auth ?? 'none';
  const dir = await mkdtemp(join(tmpdir(), 'registry-'));
  const storageDir = join(dir, 'storage');
  let credentials: Credentials | undefined;
  let issuer: TokenIssuer | undefined;
  let ownsIssuer = false;
  let authConfig: object | undefined;

  if (auth === 'htpasswd') {
    credentials = options.credentials ?? { username: 'tester', password: randomBytes(12).toString('hex') };
    const htpasswdPath = join(dir, 'htpasswd');
    await writeFile(htpasswdPath, await bcryptLine(credentials));
    authConfig = { htpasswd: { realm: 'test-registry', path: htpasswdPath } };
  } else if (auth === 'token') {
    issuer = options.issuer;
    if (!issuer) {
      issuer = await startTokenIssuer(options.issuerOptions);
      ownsIssuer = true;
    }
    credentials = issuer.credentials;
    authConfig = {
      token: { realm: issuer.realm, service: issuer.service, issuer: issuer.issuer, rootcertbundle: issuer.certPath },
    };
  }

  // Another process may take the port between probing and binding: retry a few times.
  for (let attempt = 1; ; attempt++) {
    const port = await freePort();
    const config = {
      version: '0.1',
      log: { level: 'info', formatter: 'text' },
      storage: {
        filesystem: { rootdirectory: storageDir },
        delete: { enabled: true },
        // Without this the registry starts a background purge of old upload folders.
        maintenance: { uploadpurging: { enabled: false } },
      },
      http: { addr: `127.0.0.1:${port}`, secret: randomBytes(16).toString('hex') },
      ...(authConfig ? { auth: authConfig } : {}),
      ...(options.allowForeignUrls ? { validation: { manifests: { urls: { allow: ['^https?://'] } } } } : {}),
    };
    const configPath = join(dir, 'config.yml');
    // JSON is valid YAML, and spares us quoting rules.
    await writeFile(configPath, JSON.stringify(config, null, 2));

    const log: string[] = [];
    let logChars = 0;
    const child = spawn(...diesWithThisProcess('docker-registry', ['serve', configPath]), {
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    const collect = (chunk: Buffer): void => {
      log.push(chunk.toString('utf8'));
      logChars += chunk.length;
      while (logChars > MAX_LOG_CHARS && log.length > 1) logChars -= log.shift()!.length;
    };
    child.stdout!.on('data', collect);
    child.stderr!.on('data', collect);
    const url = `http://127.0.0.1:${port}`;
    const logs = (): string => log.join('');
    const ready = await waitUntilServing(url, child, logs);
    if (!ready) {
      await stopChild(child);
      if (attempt < 4 && logs().includes('address already in use')) continue;
      await rm(dir, { recursive: true, force: true });
      if (ownsIssuer) await issuer?.stop();
      throw new Error(`docker-registry did not start:\n${logs()}`);
    }
    return {
      host: `127.0.0.1:${port}`,
      url,
      storageDir,
      auth,
      credentials,
      issuer,
      logs,
      async stop() {
        await stopChild(child);
        if (ownsIssuer) await issuer?.stop();
        await rm(dir, { recursive: true, force: true });
      },
    };
  }
}

/** Path of a blob's data file in the registry's filesystem storage. */
export function blobDataPath(registry: Pick<Registry, 'storageDir'>, digest: string): string {
  const match = /^sha256:([0-9a-f]{64})$/.exec(digest);
  if (!match) throw new Error(`not a sha256 digest: ${digest}`);
  const hex = match[1]!;
  return join(registry.storageDir, 'docker/registry/v2/blobs/sha256', hex.slice(0, 2), hex, 'data');
}

/**
 * Overwrites a stored blob so the registry serves bytes that do not match its digest. Default:
 * the same bytes with the last one inverted, so the size still matches and only hashing the
 * whole stream reveals the damage. Returns the bytes now served.
 */
export async function corruptBlob(
  registry: Pick<Registry, 'storageDir'>,
  digest: string,
  newBytes?: Uint8Array,
): Promise<Uint8Array> {
  const path = blobDataPath(registry, digest);
  let bytes = newBytes;
  if (!bytes) {
    bytes = new Uint8Array(await readFile(path));
    if (bytes.length === 0) bytes = new Uint8Array([0]);
    else bytes[bytes.length - 1]! ^= 0xff;
  }
  await writeFile(path, bytes);
  return bytes;
}

/** The registry's htpasswd backend accepts bcrypt only; the password goes through stdin, not argv. */
async function bcryptLine(credentials: Credentials): Promise<string> {
  const child = spawn('htpasswd', ['-niB', credentials.username], { stdio: ['pipe', 'pipe', 'pipe'] });
  let out = '';
  let err = '';
  child.stdout.on('data', (c: Buffer) => (out += c.toString()));
  child.stderr.on('data', (c: Buffer) => (err += c.toString()));
  child.stdin.end(`${credentials.password}\n`);
  const [code] = (await once(child, 'close')) as [number | null];
  if (code !== 0) throw new Error(`htpasswd failed (${code}): ${err} (run scripts/test-tools)`);
  return out;
}

/**
 * Waits until this child has bound the port (it logs "listening on ADDR" only after a successful
 * bind; without that check a registry that lost the port to another process would be mistaken
 * for the one answering there) and /v2/ answers (200 anonymous, 401 with auth). False if the
 * process ends first.
 */
async function waitUntilServing(url: string, child: ChildProcess, logs: () => string): Promise<boolean> {
  let exited = child.exitCode !== null;
  child.once('exit', () => (exited = true));
  const listening = `listening on ${new URL(url).host}`;
  const deadline = Date.now() + 20_000;
  while (!exited && Date.now() < deadline) {
    if (logs().includes(listening)) {
      try {
        const res = await fetch(`${url}/v2/`, { signal: AbortSignal.timeout(1000) });
        await res.arrayBuffer();
        if (res.status === 200 || res.status === 401) return true;
      } catch {
        // not answering yet
      }
    }
    await new Promise((resolve) => setTimeout(resolve, 50));
  }
  return false;
}
