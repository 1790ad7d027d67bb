-- Cart abandonment: web checkout attempts dropped after Product Added (step 2),
-- out of all attempts that put something in the cart.
SELECT
    countIf(outcome = 'dropped' AND reached_step >= 2) AS abandoned,
    countIf(reached_step >= 2) AS carts,
    round(100 * abandoned / carts, 1) AS abandonment_pct
FROM touchstream.funnel_attempts FINAL
WHERE funnel = 'web_checkout' AND is_deleted = 0
