-- The ML database (model registry ml_model_publish, dictionary table ml_dictionary, sample tables).
-- The image's entrypoint creates the database `ml` and the user `ml` (MYSQL_DATABASE/MYSQL_USER) with
-- all privileges on it; this only fixes its character set. The project creates its own tables.
ALTER DATABASE ml CHARACTER SET utf8mb4 COLLATE utf8mb4_unicode_ci;
