// The clone function's published contract: everything a client needs and nothing else. Image
// references parsed and normalised as Docker does, where each source's backup lives, the request,
// result, progress-stream and callback schemas, and callback signing. The bridge imports from
// functions/ only through this module; docs/api.md describes the same contract (and a test checks
// its examples against these schemas).

export * from './naming.ts';
export * from './reference.ts';
export * from './schemas.ts';
export * from './signing.ts';
export * from './backup-settings.ts';
