// The four settings the bridge and the function must agree on, read the same way by both: the
// bridge recomputes every backup name itself and refuses results that differ.

import { z } from 'zod';
import { awsRegion, ConfigError, oneOf, optionalString, required } from '../../lib/env.ts';
import { backupLocation, ecrRegionOf, type BackupLocation } from './naming.ts';

/** Environment variables: BACKUP_REGISTRY, BACKUP_NAMESPACE, BACKUP_LAYOUT, ECR_REGION. */
export const backupEnvironment = {
  BACKUP_REGISTRY: optionalString.transform((value) => value ?? 'docker.io'),
  BACKUP_NAMESPACE: required('Docker Hub account, ECR prefix or path for the backups'),
  BACKUP_LAYOUT: oneOf(['flat', 'nested']),
  // The backup is ECR (single separators in names) even when its host does not say so: a VPC
  // endpoint, a stand-in.
  ECR_REGION: awsRegion,
};

type BackupValues = z.output<z.ZodObject<typeof backupEnvironment>>;

export interface BackupSettings {
  readonly backup: BackupLocation;
  /** Set when the backup registry is ECR: from its host, or ECR_REGION. */
  readonly ecrRegion: string | undefined;
}

export function backupSettings(values: BackupValues): BackupSettings {
  const ecrRegion = values.ECR_REGION ?? ecrRegionOf(values.BACKUP_REGISTRY);
  try {
    const backup = backupLocation(values.BACKUP_REGISTRY, values.BACKUP_NAMESPACE, {
      ...(values.BACKUP_LAYOUT !== undefined && { layout: values.BACKUP_LAYOUT }),
      ecr: ecrRegion !== undefined,
    });
    return { backup, ecrRegion };
  } catch (error) {
    throw new ConfigError(`invalid configuration: BACKUP_NAMESPACE: ${(error as Error).message}`);
  }
}
