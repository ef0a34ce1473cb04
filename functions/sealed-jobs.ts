// A callback job waiting on a Queue (Workers) leaves the process: the credentials some of its
// images carry are sealed for the way (AES-256-GCM under a key derived from CALLBACK_SECRET, which
// queue jobs need anyway), so the queue never holds them in plain text. Web Crypto only: this runs
// in workerd.

import type { ImageRequest } from './contract/index.ts';
import type { CloneJob } from './jobs.ts';

/** A job as queued: its images sealed when any carries credentials. */
export type QueuedJob = Omit<CloneJob, 'images'> & { readonly images?: readonly string[]; readonly sealedImages?: string };

/** The Web Crypto key (named so: Node's types know CryptoKey only as a value). */
export type JobKey = Awaited<ReturnType<typeof crypto.subtle.deriveKey>>;

const INFO = new TextEncoder().encode('image-clone-controller: queued job credentials');
const SALT = new TextEncoder().encode('image-clone-controller');

export async function jobKey(secret: string): Promise<JobKey> {
  const material = await crypto.subtle.importKey('raw', new TextEncoder().encode(secret), 'HKDF', false, ['deriveKey']);
  return crypto.subtle.deriveKey(
    { name: 'HKDF', hash: 'SHA-256', salt: SALT, info: INFO },
    material,
    { name: 'AES-GCM', length: 256 },
    false,
    ['encrypt', 'decrypt'],
  );
}

export async function sealJob(job: CloneJob, key: JobKey): Promise<QueuedJob> {
  const { images, ...rest } = job;
  if (images.every((image) => typeof image === 'string')) return { ...rest, images: images as string[] };
  const iv = crypto.getRandomValues(new Uint8Array(12));
  const plain = new TextEncoder().encode(JSON.stringify(images));
  const sealed = new Uint8Array(
    await crypto.subtle.encrypt({ name: 'AES-GCM', iv, additionalData: jobBinding(job.id) }, key, plain),
  );
  return { ...rest, sealedImages: toBase64(concat(iv, sealed)) };
}

export async function openJob(queued: QueuedJob, key: JobKey): Promise<CloneJob> {
  const { sealedImages, images, ...rest } = queued;
  if (sealedImages === undefined) return { ...rest, images: images ?? [] };
  const bytes = fromBase64(sealedImages);
  const plain = await crypto.subtle.decrypt(
    { name: 'AES-GCM', iv: bytes.subarray(0, 12), additionalData: jobBinding(queued.id) },
    key,
    bytes.subarray(12),
  );
  return { ...rest, images: JSON.parse(new TextDecoder().decode(plain)) as ImageRequest[] };
}

/** Sealed images belong to their job: moved to another, they do not open. */
function jobBinding(id: string): Uint8Array {
  return new TextEncoder().encode(`job ${id}`);
}

function concat(a: Uint8Array, b: Uint8Array): Uint8Array {
  const out = new Uint8Array(a.byteLength + b.byteLength);
  out.set(a);
  out.set(b, a.byteLength);
  return out;
}

function toBase64(bytes: Uint8Array): string {
  let binary = '';
  for (const byte of bytes) binary += String.fromCharCode(byte);
  return btoa(binary);
}

function fromBase64(text: string): Uint8Array {
  return Uint8Array.from(atob(text), (character) => character.charCodeAt(0));
}
