// Which credentials of a workload's image pull secrets apply to an image, decided the way the
// kubelet decides it (pkg/credentialprovider: keyring lookup): a key of a Docker config is a
// registry host, maybe with a port, a path and `*` wildcards per host label; it applies to an
// image when the hosts have as many labels and each matches, the ports are equal, and the key's
// path is a prefix of the image's. Docker Hub's names (docker.io, index.docker.io,
// registry-1.docker.io, and the legacy "https://index.docker.io/v1/" key) are one. The most
// specific key comes first, as the kubelet tries them. Pure.

export interface PullCredentials {
  readonly username: string;
  readonly password: string;
}

/** One entry of a pull secret: the key it was written under, and its credentials. */
export interface PullSecretEntry {
  readonly key: string;
  readonly credentials: PullCredentials;
}

/**
 * The entries of a Secret of type kubernetes.io/dockerconfigjson (`.dockerconfigjson`:
 * {"auths": {key: entry}}) or kubernetes.io/dockercfg (`.dockercfg`: {key: entry}); an entry
 * holds `auth` (base64 of "user:password") or `username` and `password`. What does not parse is
 * left out, never echoed.
 */
export function pullSecretEntries(data: Readonly<Record<string, string>> | undefined): PullSecretEntry[] {
  const json = decode(data?.['.dockerconfigjson']);
  const legacy = decode(data?.['.dockercfg']);
  const auths = isObject(json) && isObject(json.auths) ? json.auths : isObject(legacy) ? legacy : {};
  const entries: PullSecretEntry[] = [];
  for (const [key, entry] of Object.entries(auths)) {
    const credentials = credentialsOf(entry);
    if (credentials !== undefined) entries.push({ key, credentials });
  }
  return entries;
}

/**
 * The credentials for `image` (a normalised reference's registry and repository), most specific
 * key first, from entries in the order the workload lists its secrets.
 */
export function matchingCredentials(
  entries: readonly PullSecretEntry[],
  image: { readonly registry: string; readonly repository: string },
): PullCredentials[] {
  const target = parseKey(`${image.registry}/${image.repository}`);
  if (target === undefined) return [];
  return entries
    .map((entry) => ({ entry, key: parseKey(entry.key) }))
    .filter((candidate) => candidate.key !== undefined && keyMatches(candidate.key, target))
    .sort((a, b) => specificity(b.key!) - specificity(a.key!))
    .map((candidate) => candidate.entry.credentials);
}

interface ParsedKey {
  readonly labels: readonly string[];
  readonly port: string;
  readonly path: string;
}

const DOCKER_HUB_NAMES = new Set(['docker.io', 'index.docker.io', 'registry-1.docker.io']);

function parseKey(key: string): ParsedKey | undefined {
  const withoutScheme = key.trim().replace(/^[a-z][a-z0-9+.-]*:\/\//i, '');
  const slash = withoutScheme.indexOf('/');
  const hostPort = (slash === -1 ? withoutScheme : withoutScheme.slice(0, slash)).toLowerCase();
  let path = slash === -1 ? '' : withoutScheme.slice(slash);
  const colon = hostPort.lastIndexOf(':');
  let host = colon === -1 ? hostPort : hostPort.slice(0, colon);
  const port = colon === -1 ? '' : hostPort.slice(colon + 1);
  if (host === '' || (port !== '' && !/^\d+$/.test(port))) return undefined;
  if (DOCKER_HUB_NAMES.has(host)) {
    host = 'docker.io';
    // The legacy key "https://index.docker.io/v1/" names the registry, not a path in it.
    if (/^\/v1\/?$/.test(path)) path = '';
  }
  return { labels: host.split('.'), port, path: path.replace(/\/+$/, '') };
}

function keyMatches(key: ParsedKey, target: ParsedKey): boolean {
  if (key.labels.length !== target.labels.length || key.port !== target.port) return false;
  if (!key.labels.every((label, i) => globMatches(label, target.labels[i]!))) return false;
  return key.path === '' || target.path === key.path || target.path.startsWith(`${key.path}/`);
}

/** `*` within one host label matches any run of characters of that label. */
function globMatches(pattern: string, label: string): boolean {
  if (!pattern.includes('*')) return pattern === label;
  const expression = new RegExp(`^${pattern.split('*').map(escapeRegExp).join('[^.]*')}$`);
  return expression.test(label);
}

/** Longer paths first, then hosts without wildcards. */
function specificity(key: ParsedKey): number {
  return key.path.length * 10 + (key.labels.some((label) => label.includes('*')) ? 0 : 1);
}

function credentialsOf(entry: unknown): PullCredentials | undefined {
  if (!isObject(entry)) return undefined;
  if (typeof entry.username === 'string' && typeof entry.password === 'string' && entry.username !== '') {
    return { username: entry.username, password: entry.password };
  }
  if (typeof entry.auth !== 'string' || entry.auth === '') return undefined;
  let decoded: string;
  try {
    decoded = new TextDecoder('utf-8', { fatal: true }).decode(Uint8Array.from(atob(entry.auth), (c) => c.charCodeAt(0)));
  } catch {
    return undefined;
  }
  const colon = decoded.indexOf(':');
  return colon > 0 ? { username: decoded.slice(0, colon), password: decoded.slice(colon + 1) } : undefined;
}

/** A Secret's data value (base64, as the API serves it) as JSON; undefined if it is not. */
function decode(value: string | undefined): unknown {
  if (value === undefined) return undefined;
  try {
    return JSON.parse(new TextDecoder('utf-8', { fatal: true }).decode(Uint8Array.from(atob(value), (c) => c.charCodeAt(0))));
  } catch {
    return undefined;
  }
}

function isObject(value: unknown): value is Record<string, unknown> {
  return typeof value === 'object' && value !== null && !Array.isArray(value);
}

function escapeRegExp(text: string): string {
  return text.replace(/[.+?^${}()|[\]\\]/g, '\\$&');
}
