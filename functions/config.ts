// Configuration from environment variables: the same names on Node, in the container and on
// Workers (vars and secrets). Validated once at start; errors name the variable, never a secret.

import { z } from 'zod';
import { backupLocation, ecrRegionOf, type BackupLayout, type BackupLocation } from './naming.ts';
import { parseDockerConfig, type Credentials } from './registry/credentials.ts';

export interface FunctionConfig {
  readonly port: number;
  readonly authToken: string;
  readonly backup: BackupLocation;
  readonly credentials: Map<string, Credentials>;
  readonly insecureRegistries: ReadonlySet<string>;
  readonly logLevel: string;
  readonly maxImagesPerRequest: number;
  /** Images of one request copied at once. */
  readonly imageConcurrency: number;
  /** Blobs of one manifest copied at once. */
  readonly blobConcurrency: number;
  /** Blob transfers at once in the whole process. */
  readonly transferConcurrency: number;
  /** Blobs under 1 MiB that share one slot of blobConcurrency and transferConcurrency. */
  readonly smallBlobsPerSlot: number;
  readonly callbackSecret: string | undefined;
  readonly callbackDeadlineSeconds: number;
  readonly ecr: EcrSettings;
}

export interface EcrSettings {
  /** Set when the backup registry is ECR: from its host, or ECR_REGION for VPC endpoints and stand-ins. */
  readonly region: string | undefined;
  readonly tagMutability: 'MUTABLE' | 'IMMUTABLE';
  readonly scanOnPush: boolean;
  readonly encryption: 'AES256' | 'KMS';
  readonly kmsKey: string | undefined;
}

export class ConfigError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'ConfigError';
  }
}

const integer = (fallback: number, min: number, max: number) =>
  z
    .string()
    .optional()
    .transform((value, ctx) => {
      if (value === undefined || value.trim() === '') return fallback;
      const parsed = Number(value);
      if (!Number.isInteger(parsed) || parsed < min || parsed > max) {
        ctx.addIssue({ code: 'custom', message: `must be an integer from ${min} to ${max}` });
        return z.NEVER;
      }
      return parsed;
    });

const list = z
  .string()
  .optional()
  .transform(
    (value) =>
      new Set(
        (value ?? '')
          .split(',')
          .map((item) => item.trim())
          .filter(Boolean),
      ),
  );

const boolean = (fallback: boolean) =>
  z
    .string()
    .optional()
    .transform((value, ctx) => {
      if (value === undefined || value === '') return fallback;
      if (/^(1|true|yes|on)$/i.test(value)) return true;
      if (/^(0|false|no|off)$/i.test(value)) return false;
      ctx.addIssue({ code: 'custom', message: 'must be true or false' });
      return z.NEVER;
    });

const environment = z.object({
  PORT: integer(8080, 1, 65535),
  AUTH_TOKEN: z
    .string({ error: 'is required (the bearer token callers must send)' })
    .min(16, 'must be at least 16 characters (generate one with: openssl rand -hex 32)'),
  BACKUP_REGISTRY: z.string().optional().default('docker.io'),
  BACKUP_NAMESPACE: z
    .string({ error: 'is required (Docker Hub account, ECR prefix or path for the backups)' })
    .min(1, 'is required'),
  BACKUP_LAYOUT: z.enum(['flat', 'nested']).optional(),
  INSECURE_REGISTRIES: list,
  LOG_LEVEL: z.enum(['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent']).optional().default('info'),
  MAX_IMAGES_PER_REQUEST: integer(50, 1, 1000),
  IMAGE_CONCURRENCY: integer(3, 1, 64),
  BLOB_CONCURRENCY: integer(4, 1, 64),
  TRANSFER_CONCURRENCY: integer(8, 1, 256),
  SMALL_BLOBS_PER_SLOT: integer(4, 1, 16),
  CALLBACK_SECRET: z.string().min(16, 'must be at least 16 characters').optional(),
  CALLBACK_DEADLINE_SECONDS: integer(900, 1, 86_400),
  ECR_REGION: z
    .string()
    .regex(/^[a-z]{2}(?:-[a-z]+)+-\d$/, 'must be an AWS region such as eu-west-1')
    .optional(),
  ECR_TAG_MUTABILITY: z.enum(['MUTABLE', 'IMMUTABLE']).optional().default('MUTABLE'),
  ECR_SCAN_ON_PUSH: boolean(false),
  ECR_ENCRYPTION: z.enum(['AES256', 'KMS']).optional().default('AES256'),
  ECR_KMS_KEY: z.string().optional(),
});

export type Environment = Readonly<Record<string, string | undefined>>;

/**
 * Reads the configuration. `registryAuthFile` is the content of REGISTRY_AUTH_FILE, read by the
 * entry point (only Node has files); REGISTRY_AUTH_JSON holds the same JSON inline.
 */
export function loadConfig(env: Environment, registryAuthFile?: string): FunctionConfig {
  // A blank value (a ConfigMap key left empty) means unset, as for the bridge.
  const present = Object.fromEntries(Object.entries(env).filter(([, value]) => value !== undefined && value.trim() !== ''));
  const parsed = environment.safeParse(present);
  if (!parsed.success) {
    const problems = parsed.error.issues.map((issue) => `${issue.path.join('.')} ${issue.message}`);
    throw new ConfigError(`invalid configuration: ${problems.join('; ')}`);
  }
  const values = parsed.data;
  const ecrRegion = values.ECR_REGION ?? ecrRegionOf(values.BACKUP_REGISTRY);
  let backup: BackupLocation;
  try {
    backup = backupLocation(values.BACKUP_REGISTRY, values.BACKUP_NAMESPACE, {
      ...(values.BACKUP_LAYOUT !== undefined && { layout: values.BACKUP_LAYOUT as BackupLayout }),
      ecr: ecrRegion !== undefined,
    });
  } catch (error) {
    throw new ConfigError(`invalid configuration: BACKUP_NAMESPACE: ${(error as Error).message}`);
  }
  const authJson = registryAuthFile ?? present.REGISTRY_AUTH_JSON;
  let credentials = new Map<string, Credentials>();
  if (authJson !== undefined && authJson.trim() !== '') {
    try {
      credentials = parseDockerConfig(authJson);
    } catch (error) {
      const source = registryAuthFile !== undefined ? 'REGISTRY_AUTH_FILE' : 'REGISTRY_AUTH_JSON';
      throw new ConfigError(`invalid configuration: ${source}: ${(error as Error).message}`);
    }
  }
  return {
    port: values.PORT,
    authToken: values.AUTH_TOKEN,
    backup,
    credentials,
    insecureRegistries: values.INSECURE_REGISTRIES,
    logLevel: values.LOG_LEVEL,
    maxImagesPerRequest: values.MAX_IMAGES_PER_REQUEST,
    imageConcurrency: values.IMAGE_CONCURRENCY,
    blobConcurrency: values.BLOB_CONCURRENCY,
    transferConcurrency: values.TRANSFER_CONCURRENCY,
    smallBlobsPerSlot: values.SMALL_BLOBS_PER_SLOT,
    callbackSecret: values.CALLBACK_SECRET,
    callbackDeadlineSeconds: values.CALLBACK_DEADLINE_SECONDS,
    ecr: {
      region: ecrRegion,
      tagMutability: values.ECR_TAG_MUTABILITY,
      scanOnPush: values.ECR_SCAN_ON_PUSH,
      encryption: values.ECR_ENCRYPTION,
      kmsKey: values.ECR_KMS_KEY,
    },
  };
}
