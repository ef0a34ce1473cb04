import { describe, expect, it } from 'vitest';
import fc from 'fast-check';
import { familiarName, formatReference, parseReference, registryApiHost } from '../../functions/contract/index.ts';

const digest = `sha256:${'ab'.repeat(32)}`;

describe('parseReference normalises like the distribution grammar', () => {
  it.each([
    ['nginx', 'docker.io/library/nginx:latest'],
    ['nginx:1.27', 'docker.io/library/nginx:1.27'],
    ['library/nginx:1.27', 'docker.io/library/nginx:1.27'],
    ['docker.io/nginx', 'docker.io/library/nginx:latest'],
    ['index.docker.io/library/nginx:1', 'docker.io/library/nginx:1'],
    ['bitnami/redis:7', 'docker.io/bitnami/redis:7'],
    ['quay.io/prometheus/node-exporter:v1.8.0', 'quay.io/prometheus/node-exporter:v1.8.0'],
    ['localhost/app', 'localhost/app:latest'],
    ['localhost:5000/app:dev', 'localhost:5000/app:dev'],
    ['127.0.0.1:5000/a/b/c/d:1', '127.0.0.1:5000/a/b/c/d:1'],
    ['[::1]:5000/app:1', '[::1]:5000/app:1'],
    ['Registry.Example.com/app', 'Registry.Example.com/app:latest'],
    ['ghcr.io/a/b__c.d-e---f:tag', 'ghcr.io/a/b__c.d-e---f:tag'],
    [`nginx@${digest}`, `docker.io/library/nginx@${digest}`],
    [`nginx:1.27@${digest}`, `docker.io/library/nginx:1.27@${digest}`],
    [`localhost:5000/app:1@${digest}`, `localhost:5000/app:1@${digest}`],
  ])('%s → %s', (input, expected) => {
    expect(formatReference(parseReference(input))).toBe(expected);
  });

  it('keeps tag and digest apart', () => {
    expect(parseReference(`localhost:5000/app:1@${digest}`)).toEqual({
      registry: 'localhost:5000',
      repository: 'app',
      tag: '1',
      digest,
    });
    expect(parseReference(`app@${digest}`).tag).toBeUndefined();
  });

  it.each([
    ['', /empty reference/],
    [' nginx', /whitespace/],
    ['Nginx', /must be lowercase/],
    ['quay.io/Prometheus/node', /must be lowercase/],
    ['nginx:', /invalid tag/],
    ['nginx:-bad', /invalid tag/],
    [`nginx:${'t'.repeat(129)}`, /tag longer than 128/],
    ['nginx@sha256:abc', /unsupported digest/],
    ['nginx@md5:0123456789abcdef0123456789abcdef', /unsupported digest/],
    ['nginx@', /invalid digest format/],
    [`nginx@sha256:${'AB'.repeat(32)}`, /unsupported digest/],
    ['a//b', /empty path component/],
    ['a/b/', /empty path component/],
    ['-a/b', /invalid path component/],
    ['a/b_', /invalid path component/],
    ['a/b___c', /invalid path component/],
    ['a/b..c', /invalid path component/],
    ['a/b c', /invalid path component/],
    ['-host.io/app', /invalid registry host/],
    ['host.io:port/app', /invalid registry host|invalid tag/],
    [':1', /missing repository name/],
    [`${'a'.repeat(64)}`, /hexadecimal/],
    [`example.com/${'a'.repeat(250)}`, /longer than 255/],
    [`${'a'.repeat(256)}`, /longer than 255/],
    ['localhost:99999999/a', /invalid registry port 99999999 \(1 to 65535\)/],
    ['localhost:0/a', /invalid registry port 0/],
    ['localhost:65536/a', /invalid registry port 65536/],
  ])('%j is refused (%s)', (input, message) => {
    expect(() => parseReference(input)).toThrow(message);
  });

  it('accepts every port from 1 to 65535', () => {
    expect(parseReference('localhost:1/a').registry).toBe('localhost:1');
    expect(parseReference('localhost:65535/a').registry).toBe('localhost:65535');
  });

  it('shows control and bidi characters of the input as escapes, never as themselves', () => {
    expect(() => parseReference('ngi\u202Enx:\u0007v1')).toThrow(/ngi\\u\{202e\}nx:\\u\{7\}v1/);
    let message = '';
    expect(() => {
      try {
        parseReference('evil\u2066/x\r\nInjected: header');
      } catch (error) {
        message = (error as Error).message;
        throw error;
      }
    }).toThrow(/invalid/);
    expect(message).toContain('evil\\u{2066}');
    expect(message).not.toMatch(/[\u0000-\u001f\u202a-\u202e\u2066-\u2069]/);
  });

  it('puts no more than 80 characters of the input in its error', () => {
    expect(() => parseReference(`a/B${'x'.repeat(500)}`)).toThrow(/\.\.\."/);
    try {
      parseReference(`a/B${'x'.repeat(500)}`);
    } catch (error) {
      expect((error as Error).message.length).toBeLessThan(200);
    }
  });
});

describe('familiarName', () => {
  it.each([
    ['nginx', 'nginx'],
    ['bitnami/redis', 'bitnami/redis'],
    ['docker.io/library/a/b', 'library/a/b'],
    ['quay.io/x/y', 'quay.io/x/y'],
    ['docker.io/localhost/x', 'docker.io/localhost/x'],
    ['docker.io/a.b/x', 'docker.io/a.b/x'],
  ])('%s → %s', (input, expected) => {
    expect(familiarName(parseReference(input))).toBe(expected);
  });

  it('parses back to the same repository for any valid name', () => {
    fc.assert(
      fc.property(arbitraryRepositoryName(), (name) => {
        const parsed = parseReference(name);
        const again = parseReference(familiarName(parsed));
        expect(again.registry).toBe(parsed.registry);
        expect(again.repository).toBe(parsed.repository);
      }),
    );
  });
});

it('speaks to Docker Hub on its API host', () => {
  expect(registryApiHost('docker.io')).toBe('registry-1.docker.io');
  expect(registryApiHost('quay.io')).toBe('quay.io');
});

/** Random valid repository names: optional registry (with port), 1–4 path components. */
export function arbitraryRepositoryName(): fc.Arbitrary<string> {
  const alnum = fc.stringMatching(/^[a-z0-9]{1,4}$/);
  const separator = fc.constantFrom('.', '_', '__', '-', '--', '---');
  const component = fc
    .tuple(alnum, fc.array(fc.tuple(separator, alnum), { maxLength: 3 }))
    .map(([head, rest]) => head + rest.map(([s, a]) => s + a).join(''));
  const hostLabel = fc.stringMatching(/^[a-z0-9](?:[a-z0-9-]{0,3}[a-z0-9])?$/);
  const host = fc.oneof(
    fc.constant('docker.io'),
    fc.constant('localhost'),
    fc
      .tuple(fc.array(hostLabel, { minLength: 2, maxLength: 3 }), fc.option(fc.integer({ min: 1, max: 65535 })))
      .map(([labels, port]) => labels.join('.') + (port === null ? '' : `:${port}`)),
    fc.tuple(hostLabel, fc.integer({ min: 1, max: 65535 })).map(([label, port]) => `${label}:${port}`),
  );
  return fc
    .tuple(fc.option(host), fc.array(component, { minLength: 1, maxLength: 4 }))
    .map(([registry, path]) => (registry === null ? '' : `${registry}/`) + path.join('/'))
    .filter((name) => {
      try {
        parseReference(name);
        return true;
      } catch {
        return false;
      }
    });
}
