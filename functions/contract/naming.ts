// Where a source image lives in the backup registry. Deterministic and collision-free: two
// different source repositories never share a backup repository. Pure; the bridge computes the same
// mapping on its own to check what the function reports.
//
// Layouts:
// - "flat" (Docker Hub, one level under the account): the familiar source name with each separator
//   rewritten to a distinct run of "_" or "-", so the mapping can be decoded and never merges names:
//     /  → _        .  → __       -  → -       _  → --       __ → ---      :  → ----
//     a run of n ≥ 2 hyphens → n + 3 hyphens
//   nginx → ns/nginx, bitnami/redis → ns/bitnami_redis,
//   quay.io/prometheus/node-exporter → ns/quay__io_prometheus_node-exporter.
// - "nested" (any other registry): namespace/registry/path, with a port written host_port
//   (a host never contains "_"): quay.io/prometheus/node-exporter → ns/quay.io/prometheus/node-exporter.
//
// A name that does not fit (too long, or not expressible in the registry's grammar) becomes
// "<readable prefix>-<sha256 of the source name>"; flat hashed names are always exactly as long as
// the limit and direct ones always shorter, nested hashed names have one component under the
// namespace and direct ones at least two, so the two kinds never meet.

import { createHash } from 'node:crypto';
import {
  DOCKER_HUB,
  NAME_TOTAL_LENGTH_MAX,
  familiarName,
  isDockerHub,
  repositoryName,
  type ImageReference,
} from './reference.ts';

export type BackupLayout = 'flat' | 'nested';

export interface BackupLocation {
  /** Registry host of the backup ("docker.io", "123456789012.dkr.ecr.eu-west-1.amazonaws.com", …). */
  readonly registry: string;
  /** Docker Hub account, ECR prefix or path under which all backups live. */
  readonly namespace: string;
  readonly layout: BackupLayout;
  /** Only single ".", "_" or "-" between characters (ECR's repository grammar). */
  readonly singleSeparators: boolean;
}

const NAMESPACE = /^[a-z0-9]+(?:(?:[_.]|__|-+)[a-z0-9]+)*(?:\/[a-z0-9]+(?:(?:[_.]|__|-+)[a-z0-9]+)*)*$/;
const SINGLE_SEPARATOR_PATH = /^[a-z0-9]+(?:[._-][a-z0-9]+)*(?:\/[a-z0-9]+(?:[._-][a-z0-9]+)*)*$/;
const FLAT_COMPONENT = /^[a-z0-9]+(?:(?:_|__|-+)[a-z0-9]+)*$/;
const HASH_HEX_LENGTH = 64;
const ECR_HOST = /^\d{12}\.dkr\.ecr(?:-fips)?\.([a-z0-9-]+)\.amazonaws\.com(?:\.cn)?$/;

/** The AWS region of an ECR registry host ("<account>.dkr.ecr.<region>.amazonaws.com"), else undefined. */
export function ecrRegionOf(registry: string): string | undefined {
  return ECR_HOST.exec(registry)?.[1];
}

export function isEcrRegistry(registry: string): boolean {
  return ecrRegionOf(registry) !== undefined;
}

export interface BackupLocationOptions {
  readonly layout?: BackupLayout;
  /** The registry is ECR (single separators); by default, when its host is an ECR host. */
  readonly ecr?: boolean;
}

/** The backup location for a registry and namespace, with the layout that registry needs. */
export function backupLocation(registry: string, namespace: string, options: BackupLocationOptions = {}): BackupLocation {
  const normalisedRegistry = isDockerHub(registry) ? DOCKER_HUB : registry.toLowerCase();
  if (!NAMESPACE.test(namespace)) {
    throw new Error(
      `invalid backup namespace "${namespace}": lowercase letters, digits, separators . _ __ - and / between components`,
    );
  }
  const singleSeparators = options.ecr ?? isEcrRegistry(normalisedRegistry);
  if (singleSeparators && !SINGLE_SEPARATOR_PATH.test(namespace)) {
    throw new Error(`invalid backup namespace "${namespace}" for ECR: only single . _ - between characters`);
  }
  const chosenLayout = options.layout ?? (normalisedRegistry === DOCKER_HUB ? 'flat' : 'nested');
  if (chosenLayout === 'flat' && namespace.includes('/')) {
    throw new Error(`invalid backup namespace "${namespace}": the flat layout (Docker Hub) allows one level`);
  }
  const location = { registry: normalisedRegistry, namespace, layout: chosenLayout, singleSeparators };
  if (nameBudget(location) < HASH_HEX_LENGTH + 8) {
    throw new Error(`backup namespace "${namespace}" is too long to leave room for repository names`);
  }
  return location;
}

/** True when the image already lives under the backup namespace: it is a backup, never copied again. */
export function isBackupImage(source: Pick<ImageReference, 'registry' | 'repository'>, backup: BackupLocation): boolean {
  const registry = isDockerHub(source.registry) ? DOCKER_HUB : source.registry.toLowerCase();
  return registry === backup.registry && source.repository.startsWith(`${backup.namespace}/`);
}

/** The repository path (inside the backup registry) that holds the backup of a source repository. */
export function backupRepository(source: Pick<ImageReference, 'registry' | 'repository'>, backup: BackupLocation): string {
  const sourceName = canonicalSourceName(source);
  const budget = nameBudget(backup);
  if (backup.layout === 'flat') {
    const encoded = encodeFlat(familiarName({ registry: sourceName.registry, repository: source.repository }));
    if (encoded !== undefined && encoded.length < budget) return `${backup.namespace}/${encoded}`;
    return `${backup.namespace}/${hashedComponent(sourceName.full, budget, budget)}`;
  }
  const nested = `${sourceName.registry.replace(':', '_')}/${source.repository}`;
  const grammar = backup.singleSeparators ? SINGLE_SEPARATOR_PATH : NAMESPACE;
  if (grammar.test(nested) && nested.length <= budget) return `${backup.namespace}/${nested}`;
  return `${backup.namespace}/${hashedComponent(sourceName.full, Math.min(budget, 128))}`;
}

/** Tag for the backup: the source's tag, or one derived from the digest for digest-only sources. */
export function backupTag(source: Pick<ImageReference, 'tag' | 'digest'>): string {
  if (source.tag !== undefined) return source.tag;
  if (source.digest === undefined) return 'latest';
  // Not "sha256-<hex>": that tag belongs to the referrers tag scheme.
  return `digest-${source.digest.replace(':', '-')}`.slice(0, 128);
}

/** The backup reference for a source, without digest: registry, repository and tag. */
export function backupReference(source: ImageReference, backup: BackupLocation): ImageReference {
  return { registry: backup.registry, repository: backupRepository(source, backup), tag: backupTag(source) };
}

function canonicalSourceName(source: Pick<ImageReference, 'registry' | 'repository'>) {
  const registry = isDockerHub(source.registry) ? DOCKER_HUB : source.registry.toLowerCase();
  return { registry, full: repositoryName({ registry, repository: source.repository }) };
}

/** Room left for the repository under the namespace: the whole name stays within the grammar's 255. */
function nameBudget(backup: Pick<BackupLocation, 'registry' | 'namespace'>): number {
  return NAME_TOTAL_LENGTH_MAX - backup.registry.length - 1 - backup.namespace.length - 1;
}

const FLAT_SEPARATORS: Record<string, string> = {
  '/': '_',
  '.': '__',
  '-': '-',
  _: '--',
  __: '---',
  ':': '----',
};

/** Rewrites the separators of a familiar name; undefined when the name holds anything else. */
export function encodeFlat(name: string): string | undefined {
  const tokens = name.match(/[a-z0-9]+|[^a-z0-9]+/g);
  if (!tokens || !/^[a-z0-9]/.test(tokens[0]!) || !/[a-z0-9]$/.test(name)) return undefined;
  let out = '';
  for (const token of tokens) {
    if (/^[a-z0-9]/.test(token)) out += token;
    else if (FLAT_SEPARATORS[token] !== undefined) out += FLAT_SEPARATORS[token];
    else if (/^-{2,}$/.test(token)) out += '-'.repeat(token.length + 3);
    else return undefined;
  }
  return FLAT_COMPONENT.test(out) ? out : undefined;
}

/**
 * `<readable prefix>-<sha256 hex of the source name>`, `length` characters long when given
 * (padded), at most `maxLength` otherwise.
 */
function hashedComponent(sourceName: string, maxLength: number, length?: number): string {
  const hex = createHash('sha256').update(sourceName).digest('hex');
  const room = (length ?? maxLength) - HASH_HEX_LENGTH - 1;
  const words = sourceName
    .toLowerCase()
    .split(/[^a-z0-9]+/)
    .filter(Boolean);
  let prefix = words.join('-').slice(0, room).replace(/-+$/, '');
  if (length !== undefined) prefix = prefix.padEnd(room, '0');
  if (prefix === '') prefix = 'image';
  return `${prefix}-${hex}`;
}
