-- The ML database: model registry (ml_model_publish), dictionary table (ml_dictionary) and sample
-- tables. The project creates its own tables on first use; this only creates the database and grants.
CREATE DATABASE IF NOT EXISTS ml CHARACTER SET utf8mb4 COLLATE utf8mb4_unicode_ci;
GRANT ALL PRIVILEGES ON ml.* TO 'airflow'@'%';
FLUSH PRIVILEGES;
