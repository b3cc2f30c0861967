import { z } from 'zod';

/**
 * The validated inputs of the ledger's operations. Objects are strict (an unknown field is an
 * error), amounts are positive safe integers, and every limit is named here.
 */
export const holdLifetimeSecondsDefault = 900;
export const holdLifetimeSecondsMax = 86_400;
export const batchEventCountMax = 1000;
export const ledgerPageSizeMax = 500;
export const ledgerPageSizeDefault = 50;
export const metadataKeyCountMax = 50;
export const reasonLengthMax = 500;

export const accountIdSchema = z.string().regex(/^[A-Za-z0-9_.:@-]{1,128}$/, '1 to 128 characters of A-Za-z0-9_.:@-');
export const amountCreditsSchema = z.int().positive().max(Number.MAX_SAFE_INTEGER);
export const idempotencyKeySchema = z
  .string()
  .min(1)
  .max(255)
  .regex(/^[\x21-\x7e]+$/, 'printable ASCII without spaces');

const metadataSchema = z
  .record(z.string().min(1).max(64), z.union([z.string().max(500), z.number(), z.boolean(), z.null()]))
  .refine((value) => Object.keys(value).length <= metadataKeyCountMax, `at most ${metadataKeyCountMax} keys`);

export const accountInputSchema = z.strictObject({
  email: z.email().max(320).nullable().optional(),
  name: z.string().min(1).max(200).nullable().optional(),
  metadata: metadataSchema.optional(),
  /** The device fingerprint the app reports; kept only as a keyed hash, for trial claims. */
  device_fingerprint: z.string().min(1).max(512).optional(),
});
export type AccountInput = z.infer<typeof accountInputSchema>;

export const usageInputSchema = z.strictObject({
  amount: amountCreditsSchema,
  idempotency_key: idempotencyKeySchema,
  description: z.string().max(500).optional(),
  metadata: metadataSchema.optional(),
});
export type UsageInput = z.infer<typeof usageInputSchema>;

export const batchEventSchema = usageInputSchema.extend({ account_id: accountIdSchema });
export type BatchEvent = z.infer<typeof batchEventSchema>;

export const usageBatchInputSchema = z.strictObject({
  events: z.array(batchEventSchema).min(1).max(batchEventCountMax),
});

export const holdInputSchema = z.strictObject({
  amount: amountCreditsSchema,
  idempotency_key: idempotencyKeySchema,
  expires_in_seconds: z.int().min(1).max(holdLifetimeSecondsMax).default(holdLifetimeSecondsDefault),
});
export type HoldInput = z.infer<typeof holdInputSchema>;

/** Left out, the amount is the whole hold (a bare POST captures everything); 0 releases it all. */
export const captureInputSchema = z.strictObject({
  amount: z.int().min(0).max(Number.MAX_SAFE_INTEGER).optional(),
});

export const grantInputSchema = z.strictObject({
  amount: amountCreditsSchema,
  source: z.enum(['promo', 'admin']),
  reason: z.string().min(1).max(reasonLengthMax),
  idempotency_key: idempotencyKeySchema,
  expires_at: z.iso.datetime({ offset: true }).optional(),
  priority: z.int().min(0).max(1000).default(0),
});
export type GrantInput = z.infer<typeof grantInputSchema>;

export const adjustmentInputSchema = z.strictObject({
  amount: z
    .int()
    .min(-Number.MAX_SAFE_INTEGER)
    .max(Number.MAX_SAFE_INTEGER)
    .refine((value) => value !== 0, 'must not be zero'),
  reason: z.string().min(1).max(reasonLengthMax),
  idempotency_key: idempotencyKeySchema,
});
export type AdjustmentInput = z.infer<typeof adjustmentInputSchema>;

/**
 * Spend limits: credits per UTC day and per UTC month. A field left out keeps its limit, null
 * removes it, 0 lets nothing be spent in that window.
 */
export const limitCreditsSchema = z.int().min(0).max(Number.MAX_SAFE_INTEGER);
export const spendLimitsInputSchema = z.strictObject({
  per_day: limitCreditsSchema.nullable().optional(),
  per_month: limitCreditsSchema.nullable().optional(),
});
export type SpendLimitsInput = z.infer<typeof spendLimitsInputSchema>;

export const ledgerQuerySchema = z.strictObject({
  limit: z.coerce.number().int().min(1).max(ledgerPageSizeMax).default(ledgerPageSizeDefault),
  cursor: z
    .string()
    .regex(/^[0-9]{1,18}$/, 'a cursor from a previous page')
    .optional(),
});
