import { describe, expect, it } from 'vitest';
import {
  DockerConfigError,
  parseDockerConfig,
  registryFromKey,
  StaticCredentials,
} from '../../functions/registry/credentials.ts';

const b64 = (text: string) => Buffer.from(text).toString('base64');

function errorOf(run: () => unknown): Error {
  try {
    run();
  } catch (error) {
    return error as Error;
  }
  throw new Error('no error was thrown');
}

describe('Docker config credentials', () => {
  it('reads auth, username/password, and Docker Hub’s legacy key', () => {
    const credentials = new StaticCredentials(
      parseDockerConfig(
        JSON.stringify({
          auths: {
            'https://index.docker.io/v1/': { auth: b64('hubuser:hub:pass') },
            'quay.io': { username: 'q', password: 'p' },
            'https://registry.example.com:5000': { auth: b64('r:s') },
          },
        }),
      ),
    );
    expect(credentials.get('docker.io')).toEqual({ username: 'hubuser', password: 'hub:pass' });
    expect(credentials.get('registry-1.docker.io')).toEqual({ username: 'hubuser', password: 'hub:pass' });
    expect(credentials.get('quay.io')).toEqual({ username: 'q', password: 'p' });
    expect(credentials.get('registry.example.com:5000')).toEqual({ username: 'r', password: 's' });
    expect(credentials.get('ghcr.io')).toBeUndefined();
  });

  it('normalises keys', () => {
    expect(registryFromKey('https://index.docker.io/v1/')).toBe('docker.io');
    expect(registryFromKey('registry-1.docker.io')).toBe('docker.io');
    expect(registryFromKey('http://LOCALHOST:5000/')).toBe('localhost:5000');
  });

  it.each([
    ['not json', /not valid JSON/],
    ['{}', /"auths"/],
    ['{"auths": {"x": 1}}', /"x" must be an object/],
    ['{"auths": {"x": {}}}', /"x" need "auth"/],
    [JSON.stringify({ auths: { x: { auth: b64('no-colon-secret') } } }), /base64 of "user:password"/],
  ])('refuses %s clearly', (json, message) => {
    expect(() => parseDockerConfig(json)).toThrow(message);
  });

  it('never echoes a secret in its errors', () => {
    const error = errorOf(() => parseDockerConfig(JSON.stringify({ auths: { x: { auth: b64('topsecretvalue') } } })));
    // The refusal of this very value, so that what it leaves out is worth checking.
    expect(error).toBeInstanceOf(DockerConfigError);
    expect(error.message).toMatch(/"x": "auth" must be base64 of "user:password"/);
    expect(error.message).not.toContain('topsecretvalue');
    expect(error.message).not.toContain(b64('topsecretvalue'));
  });
});
