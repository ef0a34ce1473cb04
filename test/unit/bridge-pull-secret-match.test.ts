import { describe, expect, it } from 'vitest';
import { matchingCredentials, pullSecretEntries, type PullSecretEntry } from '../../bridge/kube/pull-secret-match.ts';
import { parseReference } from '../../functions/contract/index.ts';

const b64 = (text: string) => Buffer.from(text).toString('base64');
const entry = (key: string, username = key): PullSecretEntry => ({ key, credentials: { username, password: 'pw' } });
const usersFor = (entries: PullSecretEntry[], image: string) =>
  matchingCredentials(entries, parseReference(image)).map((c) => c.username);

describe('pull secrets, read like the kubelet reads them', () => {
  it('reads .dockerconfigjson and .dockercfg, auth or username/password, and skips what does not parse', () => {
    const json = {
      auths: { 'quay.io': { auth: b64('q-user:q:pass') }, 'ghcr.io': { username: 'g', password: 'p' }, broken: { auth: '!!' } },
    };
    expect(pullSecretEntries({ '.dockerconfigjson': b64(JSON.stringify(json)) })).toEqual([
      { key: 'quay.io', credentials: { username: 'q-user', password: 'q:pass' } },
      { key: 'ghcr.io', credentials: { username: 'g', password: 'p' } },
    ]);
    expect(pullSecretEntries({ '.dockercfg': b64(JSON.stringify({ 'registry.example.com': { auth: b64('a:b') } })) })).toEqual([
      { key: 'registry.example.com', credentials: { username: 'a', password: 'b' } },
    ]);
    expect(pullSecretEntries({ '.dockerconfigjson': b64('not json') })).toEqual([]);
    expect(pullSecretEntries(undefined)).toEqual([]);
  });

  it('matches hosts label by label (wildcards within a label), ports exactly, paths by prefix', () => {
    const entries = [
      entry('*.gcr.io', 'any-gcr'),
      entry('registry.example.com:5000', 'port-5000'),
      entry('registry.example.com/team-a', 'team-a'),
      entry('registry.example.com', 'whole-registry'),
    ];
    expect(usersFor(entries, 'eu.gcr.io/p/app:1')).toEqual(['any-gcr']);
    expect(usersFor(entries, 'gcr.io/p/app:1')).toEqual([]); // one label fewer
    expect(usersFor(entries, 'a.b.gcr.io/p/app:1')).toEqual([]); // one more
    expect(usersFor(entries, 'registry.example.com:5000/app')).toEqual(['port-5000']);
    expect(usersFor(entries, 'registry.example.com/team-a/app')).toEqual(['team-a', 'whole-registry']);
    expect(usersFor(entries, 'registry.example.com/team-ab/app')).toEqual(['whole-registry']);
    expect(usersFor(entries, 'registry.example.com:443/team-a/app')).toEqual([]);
  });

  it('treats every Docker Hub name, and the legacy key, as one registry', () => {
    for (const key of ['https://index.docker.io/v1/', 'docker.io', 'index.docker.io', 'registry-1.docker.io']) {
      expect(usersFor([entry(key, 'hub')], 'nginx:1.27'), key).toEqual(['hub']);
      expect(usersFor([entry(key, 'hub')], 'bitnami/redis'), key).toEqual(['hub']);
    }
    expect(usersFor([entry('docker.io/team-a', 'a')], 'team-a/app')).toEqual(['a']);
    expect(usersFor([entry('docker.io/team-a', 'a')], 'team-b/app')).toEqual([]);
    expect(usersFor([entry('quay.io', 'quay')], 'nginx')).toEqual([]);
  });
});
