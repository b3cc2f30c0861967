/**
 * What logs never show: keys, signatures, and the personal data an object might carry when it
 * is logged whole (emails, names, metadata, fingerprints).
 */
export const logRedaction = {
  paths: [
    'req.headers.authorization',
    'req.headers["stripe-signature"]',
    'email',
    'metadata',
    'device_fingerprint',
    '*.email',
    '*.name',
    '*.metadata',
    '*.device_fingerprint',
    '*.apiKey',
    '*.adminKey',
    '*.secretKey',
  ],
  censor: '[redacted]',
};
