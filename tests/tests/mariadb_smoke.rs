//! The MariaDB launcher works: a private server starts and answers a real query.
#![allow(clippy::unwrap_used)] // tests: a panic is the failure report

use std::time::Duration;

use e2e::support::mariadb::MariaDb;
use mysql_async::prelude::*;

#[tokio::test]
async fn throwaway_mariadb_answers_a_query() {
    let db = tokio::task::spawn_blocking(MariaDb::start).await.unwrap();
    tokio::time::timeout(Duration::from_secs(60), async {
        let pool = mysql_async::Pool::new(db.url("mysql").as_str());
        let mut conn = pool.get_conn().await.unwrap();
        conn.query_drop("CREATE DATABASE smoke").await.unwrap();
        conn.query_drop("CREATE TABLE smoke.t (id INT PRIMARY KEY, v VARCHAR(10))").await.unwrap();
        conn.exec_drop("INSERT INTO smoke.t VALUES (?, ?)", (1, "one")).await.unwrap();
        let v: Option<String> = conn.query_first("SELECT v FROM smoke.t WHERE id = 1").await.unwrap();
        assert_eq!(v.as_deref(), Some("one"));
        let version: Option<String> = conn.query_first("SELECT VERSION()").await.unwrap();
        assert!(version.unwrap().contains("MariaDB"));
        drop(conn);
        pool.disconnect().await.unwrap();
    })
    .await
    .unwrap();
}
