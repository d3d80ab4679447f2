-- The example DAGs' training query: one row per play event of the synthetic audio platform.
-- Portable (SQLite / MySQL / Postgres). The start_ts bound parameter (named style) limits the events.
SELECT
    e.event_id,
    e.user_id,
    e.event_ts,
    e.hour AS hour_of_day,
    e.source AS play_source,
    e.network,
    u.age AS user_age,
    u.gender AS user_gender,
    u.city AS user_city,
    u.device AS user_device,
    u.is_vip AS user_is_vip,
    i.category_id AS item_category,
    c.parent AS item_parent_category,
    i.duration_s AS item_duration_s,
    i.is_paid AS item_is_paid,
    (e.event_ts - i.published_ts) / 86400.0 AS item_age_days,
    h.followers AS host_followers,
    h.level AS host_level,
    h.verified AS host_verified,
    CASE WHEN u.favorite_category_id = i.category_id THEN 1 ELSE 0 END AS user_item_category_match,
    e.listened_30s AS label
FROM play_events e
JOIN users u ON u.user_id = e.user_id
JOIN audio_items i ON i.item_id = e.item_id
JOIN hosts h ON h.host_id = i.host_id
JOIN categories c ON c.category_id = i.category_id
WHERE e.event_ts >= :start_ts
