// The AuditLake database in a new or existing ADX cluster (deployed at the cluster's resource
// group): retention and hot cache, the KQL scripts (infra/kql, and the function library that
// ships with the local tool in auditlake/kql/functions) in order, and the app's managed
// identity as database Ingestor.

@description('Name of the cluster the database lives in (in this module\'s resource group).')
param clusterName string

@description('Database name.')
param databaseName string

@description('Days data is kept (soft-delete period); tables may keep less through their own policy.')
@minValue(1)
param retentionDays int

@description('Days data is kept in hot cache.')
@minValue(0)
param hotCacheDays int

@description('Client (application) id of the managed identity that ingests.')
param ingestorClientId string

@description('Entra ID tenant of that identity.')
param ingestorTenantId string

resource cluster 'Microsoft.Kusto/clusters@2024-04-13' existing = {
  name: clusterName
}

resource database 'Microsoft.Kusto/clusters/databases@2024-04-13' = {
  parent: cluster
  name: databaseName
  location: cluster.location
  kind: 'ReadWrite'
  properties: {
    softDeletePeriod: 'P${retentionDays}D'
    hotCachePeriod: 'P${hotCacheDays}D'
  }
}

// Every script, in the order they must run: tables, policies, views (infra/kql), functions
// (auditlake/kql/functions, the same files `auditlake query` loads). Each one may use what the
// ones before it created. Adding a script is one line here; the contract test fails while a
// .kql file of either folder is not listed.
var kqlScripts = [
  { name: 'tables', content: loadTextContent('../kql/tables.kql') }
  { name: 'policies', content: loadTextContent('../kql/policies.kql') }
  { name: 'views', content: loadTextContent('../kql/views.kql') }
  { name: 'function-AuditLatency', content: loadTextContent('../../auditlake/kql/functions/AuditLatency.kql') }
  { name: 'function-AuditTampering', content: loadTextContent('../../auditlake/kql/functions/AuditTampering.kql') }
  { name: 'function-LedgerHealth', content: loadTextContent('../../auditlake/kql/functions/LedgerHealth.kql') }
  { name: 'function-LicenseChanges', content: loadTextContent('../../auditlake/kql/functions/LicenseChanges.kql') }
  { name: 'function-LogFlowGaps', content: loadTextContent('../../auditlake/kql/functions/LogFlowGaps.kql') }
  { name: 'function-MessagesRead', content: loadTextContent('../../auditlake/kql/functions/MessagesRead.kql') }
  { name: 'function-OfficeActivity', content: loadTextContent('../../auditlake/kql/functions/OfficeActivity.kql') }
  { name: 'function-SchemaDrift', content: loadTextContent('../../auditlake/kql/functions/SchemaDrift.kql') }
  { name: 'function-ServicePrincipalActivity', content: loadTextContent('../../auditlake/kql/functions/ServicePrincipalActivity.kql') }
]

// One at a time, in list order: ADX runs one database script at a time anyway.
@batchSize(1)
resource scripts 'Microsoft.Kusto/clusters/databases/scripts@2024-04-13' = [for script in kqlScripts: {
  parent: database
  name: script.name
  properties: {
    scriptContent: script.content
    continueOnErrors: false
    // A changed script runs again; the scripts are idempotent (create-merge, create-or-alter).
    forceUpdateTag: uniqueString(script.content)
  }
}]

// Database Ingestor: queued and streaming ingestion into every table, and nothing else. The app
// never queries ADX (the ledger and checkpoints live in Table Storage), so it gets no Viewer:
// a stolen token can add rows but not read the audit log. Dropping the role here does not
// revoke it where an earlier version of this template granted it: delete that Viewer principal
// assignment there (az kusto database-principal-assignment delete).
// After the scripts: ADX refuses concurrent changes to one database.
resource ingestor 'Microsoft.Kusto/clusters/databases/principalAssignments@2024-04-13' = {
  parent: database
  // The name an earlier version of this template gave the same assignment.
  name: guid(database.id, ingestorClientId, 'Ingestor')
  properties: {
    principalId: ingestorClientId
    principalType: 'App'
    role: 'Ingestor'
    tenantId: ingestorTenantId
  }
  dependsOn: [
    scripts
  ]
}

output databaseName string = database.name
output queryUri string = cluster.properties.uri
output ingestUri string = cluster.properties.dataIngestionUri
