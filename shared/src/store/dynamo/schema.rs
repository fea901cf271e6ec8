//! The table's shape, and its creation where `herald-local` runs against DynamoDB Local
//! (on AWS the SAM template creates it from the same description).

use std::time::Duration;

use aws_sdk_dynamodb::types::{
    AttributeDefinition, BillingMode, GlobalSecondaryIndex, KeySchemaElement, KeyType, Projection,
    ProjectionType, ScalarAttributeType, TableStatus, TimeToLiveSpecification,
};

use super::DynamoStore;
use super::errors::{build_error, store_error};
use crate::store::StoreError;

/// The table's shape, shared by table creation, the SAM template and their comparison.
pub struct TableSchema {
    /// Partition key attribute.
    pub partition_key: &'static str,
    /// Sort key attribute.
    pub sort_key: &'static str,
    /// The one global secondary index.
    pub index: &'static str,
    /// Its partition key attribute.
    pub index_partition_key: &'static str,
    /// Its sort key attribute.
    pub index_sort_key: &'static str,
    /// Non-key attributes the index projects.
    pub index_projects: &'static [&'static str],
    /// The TTL attribute (epoch seconds).
    pub ttl_attribute: &'static str,
}

/// Herald's table.
pub const TABLE: TableSchema = TableSchema {
    partition_key: "pk",
    sort_key: "sk",
    index: "by_user",
    index_partition_key: "gsi1pk",
    index_sort_key: "gsi1sk",
    index_projects: &["expires_at"],
    ttl_attribute: "ttl",
};

/// How often creation looks whether the new table is active.
const ACTIVE_POLL: Duration = Duration::from_millis(100);
/// How many times it looks before going on (DynamoDB Local is active at once; AWS within
/// seconds).
const ACTIVE_POLLS: u32 = 100;

impl DynamoStore {
    /// Creates the table as [`TABLE`] describes it, unless it exists, and waits until it is
    /// active with TTL on.
    pub async fn create_table_if_missing(&self) -> Result<(), StoreError> {
        let described = self
            .client
            .describe_table()
            .table_name(&self.table)
            .send()
            .await;
        let exists = match described {
            Ok(_) => true,
            Err(e)
                if e.as_service_error()
                    .is_some_and(|e| e.is_resource_not_found_exception()) =>
            {
                false
            }
            Err(e) => return Err(store_error(e)),
        };
        if !exists {
            self.create_table().await?;
        }
        self.wait_until_active().await?;
        self.turn_ttl_on().await
    }

    async fn create_table(&self) -> Result<(), StoreError> {
        let key = |name: &str, kind: KeyType| {
            KeySchemaElement::builder()
                .attribute_name(name)
                .key_type(kind)
                .build()
                .map_err(build_error)
        };
        let attribute = |name: &str| {
            AttributeDefinition::builder()
                .attribute_name(name)
                .attribute_type(ScalarAttributeType::S)
                .build()
                .map_err(build_error)
        };
        let projects = TABLE.index_projects.iter().map(|a| (*a).to_owned());
        let index = GlobalSecondaryIndex::builder()
            .index_name(TABLE.index)
            .key_schema(key(TABLE.index_partition_key, KeyType::Hash)?)
            .key_schema(key(TABLE.index_sort_key, KeyType::Range)?)
            .projection(
                Projection::builder()
                    .projection_type(ProjectionType::Include)
                    .set_non_key_attributes(Some(projects.collect()))
                    .build(),
            )
            .build()
            .map_err(build_error)?;
        let created = self
            .client
            .create_table()
            .table_name(&self.table)
            .billing_mode(BillingMode::PayPerRequest)
            .key_schema(key(TABLE.partition_key, KeyType::Hash)?)
            .key_schema(key(TABLE.sort_key, KeyType::Range)?)
            .attribute_definitions(attribute(TABLE.partition_key)?)
            .attribute_definitions(attribute(TABLE.sort_key)?)
            .attribute_definitions(attribute(TABLE.index_partition_key)?)
            .attribute_definitions(attribute(TABLE.index_sort_key)?)
            .global_secondary_indexes(index)
            .send()
            .await;
        match created {
            Ok(_) => Ok(()),
            // Another process created it meanwhile.
            Err(e)
                if e.as_service_error()
                    .is_some_and(|e| e.is_resource_in_use_exception()) =>
            {
                Ok(())
            }
            Err(e) => Err(store_error(e)),
        }
    }

    async fn wait_until_active(&self) -> Result<(), StoreError> {
        for _ in 0..ACTIVE_POLLS {
            let described = self
                .client
                .describe_table()
                .table_name(&self.table)
                .send()
                .await
                .map_err(store_error)?;
            if described.table().and_then(|t| t.table_status()) == Some(&TableStatus::Active) {
                break;
            }
            tokio::time::sleep(ACTIVE_POLL).await;
        }
        Ok(())
    }

    async fn turn_ttl_on(&self) -> Result<(), StoreError> {
        let ttl = self
            .client
            .describe_time_to_live()
            .table_name(&self.table)
            .send()
            .await
            .map_err(store_error)?;
        let enabled = ttl
            .time_to_live_description()
            .and_then(|d| d.attribute_name())
            == Some(TABLE.ttl_attribute);
        if !enabled {
            self.client
                .update_time_to_live()
                .table_name(&self.table)
                .time_to_live_specification(
                    TimeToLiveSpecification::builder()
                        .enabled(true)
                        .attribute_name(TABLE.ttl_attribute)
                        .build()
                        .map_err(build_error)?,
                )
                .send()
                .await
                .map_err(store_error)?;
        }
        Ok(())
    }
}
