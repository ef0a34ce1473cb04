// Configuration from environment variables: the same names on Node, in the container and on
// Workers (vars and secrets). Validated once at start; errors name the variable, never a secret.

import { z } from 'zod';
import {
  boolean,
  ConfigError,
  httpUrl,
  integer,
  list,
  logLevel,
  oneOf,
  optionalString,
  parseEnvironment,
  secret,
  type Environment,
  type LogLevel,
} from '../lib/env.ts';
import { printable } from '../lib/text.ts';
import { backupEnvironment, backupSettings, DEFAULT_MAX_IMAGES_PER_REQUEST, type BackupLocation } from './contract/index.ts';
import type { CopyLimits } from './copy/limits.ts';
import { parseDockerConfig, type Credentials } from './registry/credentials.ts';

export { ConfigError };

/** `scheme://host[:port]` of an http(s) URL or origin, lowercased; undefined for anything else. */
export function originOf(url: string): string | undefined {
  try {
    const parsed = new URL(url);
    return parsed.protocol === 'http:' || parsed.protocol === 'https:' ? parsed.origin : undefined;
  } catch {
    return undefined;
  }
}

/**
 * Registries as references name them (docker.io, quay.io, registry.example.com:5000), where `*`
 * matches any run of characters (`*.gcr.io`): SOURCE_REGISTRIES, SHARED_CREDENTIAL_REGISTRIES.
 */
export class RegistryPatterns {
  readonly #patterns: RegExp[];
  readonly text: string;

  constructor(patterns: readonly string[]) {
    this.text = patterns.join(',');
    this.#patterns = patterns.map(
      (pattern) =>
        new RegExp(
          `^${pattern
            .toLowerCase()
            .replace(/[.+?^${}()|[\]\\]/g, '\\$&')
            .replace(/\*/g, '.*')}$`,
        ),
    );
  }

  allows(registry: string): boolean {
    const name = registry.toLowerCase();
    return this.#patterns.some((pattern) => pattern.test(name));
  }
}

export interface FunctionConfig {
  readonly port: number;
  readonly authToken: string;
  readonly backup: BackupLocation;
  readonly credentials: Map<string, Credentials>;
  readonly insecureRegistries: ReadonlySet<string>;
  readonly logLevel: LogLevel;
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
  /**
   * Origins (scheme://host[:port]) callbacks may be posted to: CALLBACK_ORIGINS, else the origin of
   * CALLBACK_URL (the bridge's, from the ConfigMap both read); empty: callbacks are refused.
   */
  readonly callbackOrigins: ReadonlySet<string>;
  /** Registries images may be copied from (globs); undefined: any. */
  readonly sourceRegistries: RegistryPatterns | undefined;
  /** Source registries the function's own credentials serve (globs); undefined: none but the backup. */
  readonly sharedCredentialRegistries: RegistryPatterns | undefined;
  readonly limits: CopyLimits;
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

/** A comma list of RegistryPatterns; empty: undefined. */
const registryPatterns = list.transform((patterns, ctx) => {
  for (const pattern of patterns) {
    if (!/^[a-z0-9*]([a-z0-9*.-]*[a-z0-9*])?(:[0-9*]+)?$/i.test(pattern)) {
      ctx.addIssue({ code: 'custom', message: `"${printable(pattern, 80)}" is not a registry host or glob` });
    }
  }
  return patterns.length === 0 ? undefined : new RegistryPatterns(patterns);
});

const environment = z.object({
  ...backupEnvironment,
  PORT: integer(8080, 1, 65535),
  AUTH_TOKEN: secret('the bearer token callers must send'),
  INSECURE_REGISTRIES: list.transform((names) => new Set(names)),
  LOG_LEVEL: logLevel,
  MAX_IMAGES_PER_REQUEST: integer(DEFAULT_MAX_IMAGES_PER_REQUEST, 1, 1000),
  IMAGE_CONCURRENCY: integer(3, 1, 64),
  BLOB_CONCURRENCY: integer(4, 1, 64),
  TRANSFER_CONCURRENCY: integer(8, 1, 256),
  SMALL_BLOBS_PER_SLOT: integer(4, 1, 16),
  CALLBACK_SECRET: optionalString.pipe(z.string().min(16, 'must be at least 16 characters').optional()),
  CALLBACK_DEADLINE_SECONDS: integer(900, 1, 86_400),
  CALLBACK_ORIGINS: list.transform((origins, ctx) => {
    const normalised = new Set<string>();
    for (const origin of origins) {
      const parsed = originOf(origin);
      if (parsed === undefined) ctx.addIssue({ code: 'custom', message: `"${printable(origin, 80)}" is not an http(s) origin` });
      else normalised.add(parsed);
    }
    return normalised;
  }),
  // The bridge's CALLBACK_URL, when the function reads the same ConfigMap: its origin is where
  // callbacks may go unless CALLBACK_ORIGINS says otherwise.
  CALLBACK_URL: httpUrl("the bridge's /callback"),
  SOURCE_REGISTRIES: registryPatterns,
  SHARED_CREDENTIAL_REGISTRIES: registryPatterns,
  MAX_INDEX_DEPTH: integer(4, 1, 16),
  MAX_MANIFESTS_PER_IMAGE: integer(256, 1, 10_000),
  MAX_MANIFEST_BYTES_PER_IMAGE: integer(16 * 1024 * 1024, 4 * 1024 * 1024, 256 * 1024 * 1024),
  IMAGE_DEADLINE_SECONDS: integer(1800, 10, 86_400),
  STALL_SECONDS: integer(60, 1, 3600),
  ECR_TAG_MUTABILITY: oneOf(['MUTABLE', 'IMMUTABLE']).transform((value) => value ?? 'MUTABLE'),
  ECR_SCAN_ON_PUSH: boolean(false),
  ECR_ENCRYPTION: oneOf(['AES256', 'KMS']).transform((value) => value ?? 'AES256'),
  ECR_KMS_KEY: optionalString,
});

/**
 * Reads the configuration. `registryAuthFile` is the content of REGISTRY_AUTH_FILE, read by the
 * entry point (only Node has files); REGISTRY_AUTH_JSON holds the same JSON inline.
 */
export function loadConfig(env: Environment, registryAuthFile?: string): FunctionConfig {
  const values = parseEnvironment(environment, env);
  const { backup, ecrRegion } = backupSettings(values);
  const authJson = registryAuthFile ?? env.REGISTRY_AUTH_JSON;
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
    callbackOrigins:
      values.CALLBACK_ORIGINS.size > 0 || values.CALLBACK_URL === undefined
        ? values.CALLBACK_ORIGINS
        : new Set([new URL(values.CALLBACK_URL).origin]),
    sourceRegistries: values.SOURCE_REGISTRIES,
    sharedCredentialRegistries: values.SHARED_CREDENTIAL_REGISTRIES,
    limits: {
      indexDepth: values.MAX_INDEX_DEPTH,
      manifestsPerImage: values.MAX_MANIFESTS_PER_IMAGE,
      manifestBytesPerImage: values.MAX_MANIFEST_BYTES_PER_IMAGE,
      imageDeadlineMs: values.IMAGE_DEADLINE_SECONDS * 1000,
      stallMs: values.STALL_SECONDS * 1000,
    },
    ecr: {
      region: ecrRegion,
      tagMutability: values.ECR_TAG_MUTABILITY,
      scanOnPush: values.ECR_SCAN_ON_PUSH,
      encryption: values.ECR_ENCRYPTION,
      kmsKey: values.ECR_KMS_KEY,
    },
  };
}
