import { describe, expect, it } from 'vitest';
import { ConfigError, loadConfig } from '../../functions/config.ts';

const TOKEN = 'a-token-of-sixteen-or-more';
const minimal = { AUTH_TOKEN: TOKEN, BACKUP_NAMESPACE: 'backups' };

function configError(env: Record<string, string | undefined>, file?: string): string {
  try {
    loadConfig(env, file);
  } catch (error) {
    expect(error).toBeInstanceOf(ConfigError);
    return (error as Error).message;
  }
  throw new Error('loadConfig accepted the configuration');
}

describe('function configuration', () => {
  it('has the documented defaults', () => {
    const config = loadConfig(minimal);
    expect(config).toMatchObject({
      port: 8080,
      logLevel: 'info',
      maxImagesPerRequest: 50,
      imageConcurrency: 3,
      blobConcurrency: 4,
      transferConcurrency: 8,
      smallBlobsPerSlot: 4,
      callbackSecret: undefined,
      callbackDeadlineSeconds: 900,
    });
    expect(config.backup).toMatchObject({ registry: 'docker.io', namespace: 'backups', layout: 'flat' });
    expect(config.insecureRegistries.size).toBe(0);
    expect(config.credentials.size).toBe(0);
    expect(config.ecr.region).toBeUndefined();
  });

  it('reads the concurrency settings, and a blank value is unset', () => {
    const config = loadConfig({
      ...minimal,
      IMAGE_CONCURRENCY: '2',
      BLOB_CONCURRENCY: '2',
      TRANSFER_CONCURRENCY: ' ',
      SMALL_BLOBS_PER_SLOT: '1',
    });
    expect(config).toMatchObject({ imageConcurrency: 2, blobConcurrency: 2, transferConcurrency: 8, smallBlobsPerSlot: 1 });
  });

  it('names every bad variable at once', () => {
    const message = configError({ AUTH_TOKEN: 'short', SMALL_BLOBS_PER_SLOT: '0', BLOB_CONCURRENCY: '2.5', PORT: 'http' });
    expect(message).toContain('AUTH_TOKEN must be at least 16 characters');
    expect(message).toContain('BACKUP_NAMESPACE is required');
    expect(message).toContain('SMALL_BLOBS_PER_SLOT must be an integer from 1 to 16');
    expect(message).toContain('BLOB_CONCURRENCY must be an integer from 1 to 64');
    expect(message).toContain('PORT');
  });

  it('says which credentials are bad without repeating them', () => {
    const secret = 'dXNlcjpzM2NyZXQ='; // user:s3cret
    const inline = configError({ ...minimal, REGISTRY_AUTH_JSON: `{"auths": {"r.example": {"auth": "${secret}"` });
    expect(inline).toContain('REGISTRY_AUTH_JSON');
    expect(inline).not.toContain(secret);
    const file = configError(minimal, JSON.stringify({ auths: { 'r.example': { auth: 'not base64 of a pair' } } }));
    expect(file).toContain('REGISTRY_AUTH_FILE');
    expect(file).not.toContain('not base64 of a pair');
  });

  it('reads Docker config credentials, the Docker Hub key included', () => {
    const auth = Buffer.from('robot:pa55').toString('base64');
    const config = loadConfig({
      ...minimal,
      REGISTRY_AUTH_JSON: JSON.stringify({
        auths: { 'https://index.docker.io/v1/': { auth }, 'r.example:5000': { username: 'u', password: 'p' } },
      }),
    });
    expect(config.credentials.size).toBe(2);
  });

  it('treats an ECR host as ECR, and keeps the flat layout for Docker Hub only', () => {
    const ecr = loadConfig({ ...minimal, BACKUP_REGISTRY: '123456789012.dkr.ecr.eu-west-1.amazonaws.com' });
    expect(ecr.ecr.region).toBe('eu-west-1');
    expect(ecr.backup.layout).toBe('nested');
    expect(configError({ ...minimal, BACKUP_NAMESPACE: 'a/b' })).toContain('BACKUP_NAMESPACE');
  });
});
