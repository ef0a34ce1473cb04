import { describe, expect, it } from 'vitest';
import fc from 'fast-check';
import {
  backupLocation,
  backupReference,
  backupRepository,
  backupTag,
  encodeFlat,
  isBackupImage,
  NAME_TOTAL_LENGTH_MAX,
  parseReference,
  repositoryName,
} from '../../functions/contract/index.ts';
import { arbitraryRepositoryName } from './reference.test.ts';

/** The inverse of encodeFlat: proves the mapping never merges two names. */
function decodeFlat(encoded: string): string {
  return encoded.replace(/_+|-+/g, (run) => {
    if (run === '_') return '/';
    if (run === '__') return '.';
    if (run[0] === '_') throw new Error(`not a flat name: "${encoded}"`);
    const decoded = ['-', '_', '__', ':'][run.length - 1];
    return decoded ?? '-'.repeat(run.length - 3);
  });
}

const hub = backupLocation('docker.io', 'backupacct');
const oci = backupLocation('registry.example.com:5000', 'backup/mirror');
const ecr = backupLocation('123456789012.dkr.ecr.eu-west-1.amazonaws.com', 'backup');
const flatLocal = backupLocation('127.0.0.1:5000', 'backupacct', { layout: 'flat' });

const repo = (image: string, location = hub) => backupRepository(parseReference(image), location);

describe('flat layout (Docker Hub: one level under the account)', () => {
  it.each([
    ['nginx:1.27', 'backupacct/nginx'],
    ['bitnami/redis', 'backupacct/bitnami_redis'],
    ['docker.io/library/a/b', 'backupacct/library_a_b'],
    ['quay.io/prometheus/node-exporter', 'backupacct/quay__io_prometheus_node-exporter'],
    ['registry.k8s.io/kube-proxy', 'backupacct/registry__k8s__io_kube-proxy'],
    ['localhost:5000/app', 'backupacct/localhost----5000_app'],
    ['ghcr.io/a/b_c', 'backupacct/ghcr__io_a_b--c'],
    ['ghcr.io/a/b__c', 'backupacct/ghcr__io_a_b---c'],
    ['ghcr.io/a/b--c', 'backupacct/ghcr__io_a_b-----c'],
  ])('%s → %s', (image, expected) => {
    expect(repo(image)).toBe(expected);
  });

  it('keeps a/b-c and a-b/c apart', () => {
    expect(repo('ghcr.io/a/b-c')).not.toBe(repo('ghcr.io/a-b/c'));
    expect(repo('a/b-c')).not.toBe(repo('a-b/c'));
    expect(repo('a/b_c')).not.toBe(repo('a_b/c'));
  });

  it('uses only Docker Hub characters in one level, within the length limits', () => {
    fc.assert(
      fc.property(arbitraryRepositoryName(), (name) => {
        const target = repo(name);
        const [account, repository, ...more] = target.split('/');
        expect(account).toBe('backupacct');
        expect(more).toEqual([]);
        expect(repository).toMatch(/^[a-z0-9]+(?:(?:_|__|-+)[a-z0-9]+)*$/);
        expect(`docker.io/${target}`.length).toBeLessThanOrEqual(NAME_TOTAL_LENGTH_MAX);
        expect(() => parseReference(`docker.io/${target}:1`)).not.toThrow();
      }),
    );
  });

  it('decodes back to the source name (so no two names can meet)', () => {
    fc.assert(
      fc.property(arbitraryRepositoryName(), (name) => {
        const source = parseReference(name);
        const encoded = repo(name).slice('backupacct/'.length);
        const decoded = parseReference(decodeFlat(encoded));
        expect(repositoryName(decoded)).toBe(repositoryName(source));
      }),
    );
  });

  it('never maps two different names to one repository, hashed ones included', () => {
    const longComponent = fc.stringMatching(/^[a-z0-9]{40,60}$/);
    const longName = fc.array(longComponent, { minLength: 3, maxLength: 4 }).map((parts) => `example.com/${parts.join('/')}`);
    fc.assert(
      fc.property(fc.uniqueArray(fc.oneof(arbitraryRepositoryName(), longName), { minLength: 2, maxLength: 30 }), (names) => {
        const sources = new Set(names.map((n) => repositoryName(parseReference(n))));
        const targets = new Set(names.map((n) => repo(n)));
        expect(targets.size).toBe(sources.size);
      }),
    );
  });

  it('hashes names that would be too long, to exactly the longest length allowed', () => {
    const long = `example.com/${'a'.repeat(110)}/${'b'.repeat(110)}`;
    const target = repo(long);
    expect(`docker.io/${target}`.length).toBe(NAME_TOTAL_LENGTH_MAX);
    expect(target).toMatch(/^backupacct\/example-com-a{110}-b+-[0-9a-f]{64}$/);
    expect(repo(`example.com/${'a'.repeat(110)}/${'b'.repeat(109)}`)).not.toBe(target);
    // One character shorter and it fits: direct names stay shorter than hashed ones.
    expect(repo(`example.com/${'a'.repeat(110)}/${'b'.repeat(107)}`)).toBe(
      `backupacct/example__com_${'a'.repeat(110)}_${'b'.repeat(107)}`,
    );
  });

  it('works the same on a local registry told to use the flat layout', () => {
    expect(repo('quay.io/x/y', flatLocal)).toBe('backupacct/quay__io_x_y');
  });

  it('rejects a nested namespace', () => {
    expect(() => backupLocation('docker.io', 'a/b')).toThrow(/one level/);
  });

  it('encodeFlat refuses characters outside the grammar', () => {
    expect(encodeFlat('[::1]:5000/app')).toBeUndefined();
  });
});

describe('nested layout (any other registry)', () => {
  it.each([
    ['nginx:1.27', 'backup/mirror/docker.io/library/nginx'],
    ['quay.io/prometheus/node-exporter', 'backup/mirror/quay.io/prometheus/node-exporter'],
    ['localhost:5000/app', 'backup/mirror/localhost_5000/app'],
    ['ghcr.io/a/b__c', 'backup/mirror/ghcr.io/a/b__c'],
  ])('%s → %s', (image, expected) => {
    expect(repo(image, oci)).toBe(expected);
  });

  it('never maps two different names to one repository', () => {
    fc.assert(
      fc.property(fc.uniqueArray(arbitraryRepositoryName(), { minLength: 2, maxLength: 30 }), (names) => {
        const sources = new Set(names.map((n) => repositoryName(parseReference(n))));
        expect(new Set(names.map((n) => repo(n, oci))).size).toBe(sources.size);
        expect(new Set(names.map((n) => repo(n, ecr))).size).toBe(sources.size);
      }),
    );
  });

  it('produces names ECR accepts (single separators, within 256)', () => {
    fc.assert(
      fc.property(arbitraryRepositoryName(), (name) => {
        const target = repo(name, ecr);
        expect(target).toMatch(/^(?:[a-z0-9]+(?:[._-][a-z0-9]+)*\/)*[a-z0-9]+(?:[._-][a-z0-9]+)*$/);
        expect(target.length).toBeLessThanOrEqual(256);
      }),
    );
    expect(repo('ghcr.io/a/b__c', ecr)).toMatch(/^backup\/ghcr-io-a-b-c-[0-9a-f]{64}$/);
  });
});

describe('backup tags and references', () => {
  const digest = `sha256:${'cd'.repeat(32)}`;
  it('keeps the tag, and derives one from the digest for digest-only sources', () => {
    expect(backupTag({ tag: '1.27' })).toBe('1.27');
    expect(backupTag({ tag: '1.27', digest })).toBe('1.27');
    expect(backupTag({ digest })).toBe(`digest-sha256-${'cd'.repeat(32)}`);
    expect(backupTag({ digest })).not.toMatch(/^sha256-/);
    expect(() => parseReference(`x:${backupTag({ digest: `sha512:${'ef'.repeat(64)}` })}`)).not.toThrow();
  });

  it('points the reference at the backup registry', () => {
    expect(backupReference(parseReference(`quay.io/x/y@${digest}`), hub)).toEqual({
      registry: 'docker.io',
      repository: 'backupacct/quay__io_x_y',
      tag: `digest-sha256-${'cd'.repeat(32)}`,
    });
  });

  it('recognises images already in the backup namespace', () => {
    expect(isBackupImage(parseReference('backupacct/nginx:1'), hub)).toBe(true);
    expect(isBackupImage(parseReference('index.docker.io/backupacct/nginx:1'), hub)).toBe(true);
    expect(isBackupImage(parseReference('otheracct/nginx:1'), hub)).toBe(false);
    expect(isBackupImage(parseReference('backupacct2/nginx:1'), hub)).toBe(false);
    expect(isBackupImage(parseReference('registry.example.com:5000/backup/mirror/x'), oci)).toBe(true);
    expect(isBackupImage(parseReference('quay.io/backup/mirror/x'), oci)).toBe(false);
  });

  it('refuses namespaces the registry cannot hold', () => {
    expect(() => backupLocation('docker.io', 'Upper')).toThrow(/invalid backup namespace/);
    expect(() => backupLocation('123456789012.dkr.ecr.eu-west-1.amazonaws.com', 'a__b')).toThrow(/ECR/);
    expect(() => backupLocation('docker.io', 'a'.repeat(200))).toThrow(/too long/);
  });
});
