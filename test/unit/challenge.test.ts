import { describe, expect, it } from 'vitest';
import { parseChallenges } from '../../functions/registry/challenge.ts';

describe('parseChallenges', () => {
  it('reads a Docker Hub bearer challenge', () => {
    expect(
      parseChallenges(
        'Bearer realm="https://auth.docker.io/token",service="registry.docker.io",scope="repository:library/nginx:pull"',
      ),
    ).toEqual([
      {
        scheme: 'bearer',
        params: { realm: 'https://auth.docker.io/token', service: 'registry.docker.io', scope: 'repository:library/nginx:pull' },
      },
    ]);
  });

  it('reads Basic, unquoted values, escapes and several challenges in one header', () => {
    expect(parseChallenges('Basic realm="Registry Realm"')).toEqual([{ scheme: 'basic', params: { realm: 'Registry Realm' } }]);
    expect(parseChallenges('Bearer realm=https://x/token, error="insufficient_scope",scope="a b"')).toEqual([
      { scheme: 'bearer', params: { realm: 'https://x/token', error: 'insufficient_scope', scope: 'a b' } },
    ]);
    expect(parseChallenges('Basic realm="a \\"quoted\\" realm", Bearer realm="https://t",service="s"')).toEqual([
      { scheme: 'basic', params: { realm: 'a "quoted" realm' } },
      { scheme: 'bearer', params: { realm: 'https://t', service: 's' } },
    ]);
  });

  it('gives nothing for an absent or empty header and never throws on junk', () => {
    expect(parseChallenges(null)).toEqual([]);
    expect(parseChallenges('')).toEqual([]);
    expect(() => parseChallenges('=,,"unterminated')).not.toThrow();
  });
});
