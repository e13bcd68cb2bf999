-- A small point-of-sale schema for the demo's traffic.
CREATE TABLE IF NOT EXISTS categories (
    id   serial PRIMARY KEY,
    name text NOT NULL UNIQUE
);
CREATE TABLE IF NOT EXISTS products (
    id           serial PRIMARY KEY,
    name         text NOT NULL UNIQUE,
    category_id  int NOT NULL REFERENCES categories(id),
    price        numeric(10,2) NOT NULL CHECK (price >= 0),
    is_active    boolean NOT NULL DEFAULT true,
    last_updated timestamptz NOT NULL DEFAULT now()
);
CREATE TABLE IF NOT EXISTS inventory (
    product_id int PRIMARY KEY REFERENCES products(id),
    quantity   int NOT NULL CHECK (quantity >= 0)
);
CREATE TABLE IF NOT EXISTS customers (
    id    serial PRIMARY KEY,
    name  text NOT NULL,
    email text NOT NULL UNIQUE
);
CREATE TABLE IF NOT EXISTS sales (
    id             serial PRIMARY KEY,
    customer_id    int REFERENCES customers(id),
    total          numeric(12,2) NOT NULL,
    payment_method text NOT NULL,
    status         text NOT NULL,
    created_at     timestamptz NOT NULL DEFAULT now()
);
CREATE TABLE IF NOT EXISTS sale_items (
    id         serial PRIMARY KEY,
    sale_id    int NOT NULL REFERENCES sales(id),
    product_id int NOT NULL REFERENCES products(id),
    quantity   int NOT NULL CHECK (quantity > 0),
    price      numeric(10,2) NOT NULL,
    subtotal   numeric(12,2) NOT NULL
);
CREATE INDEX IF NOT EXISTS sales_created_at ON sales (created_at);
CREATE INDEX IF NOT EXISTS sale_items_sale_id ON sale_items (sale_id);
