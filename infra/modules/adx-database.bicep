// The AuditLake database in a new or existing ADX cluster (deployed at the cluster's resource
// group): retention and hot cache, the KQL scripts (infra/kql, and the function library that
// ships with the local tool in auditlake/kql/functions) in order, the app's managed identity as
// database Ingestor, and who else may read it: the alert rules' identity (modules/alerts.bicep),
// an analyst group (Viewer) and an admin group (Admin), each only when given.

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

@description('Entra ID tenant of that identity, and of the alert identity and the groups below.')
param ingestorTenantId string

@description('Client (application) id of the identity the alert rules query with (database Viewer); empty: none.')
param alertsClientId string = ''

@description('Principal (object) id of that identity (Reader on the cluster, which adx() queries need); empty: none.')
param alertsPrincipalId string = ''

@description('Object id of the Entra ID group of analysts (database Viewer: query everything, change nothing); empty: none.')
param analystGroupObjectId string = ''

@description('Object id of the Entra ID group of administrators (database Admin); empty: none.')
param adminGroupObjectId string = ''

// The thresholds the alert rules hold HealthChecks to (see HealthChecksForAlerts below).
@description('LogFlowGap: hours a tenant x content type may stay silent.')
@minValue(1)
param gapHours int = 6

@description('BlobNearExpiry: hours before a blob\'s expiry at which an unsettled blob is reported.')
@minValue(1)
@maxValue(167)
param nearExpiryHours int = 24

@description('CollectorRunFailing: failed runs in a row that count as failing.')
@minValue(1)
param failedRuns int = 3

@description('Hours HealthChecks looks back for tampering and for failed and expired blobs (a failing collector is reported until a pass succeeds).')
@minValue(1)
param lookbackHours int = 24

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
  { name: 'entra', content: loadTextContent('../kql/entra.kql') }
  { name: 'function-AuditLatency', content: loadTextContent('../../auditlake/kql/functions/AuditLatency.kql') }
  { name: 'function-AuditTampering', content: loadTextContent('../../auditlake/kql/functions/AuditTampering.kql') }
  { name: 'function-LedgerHealth', content: loadTextContent('../../auditlake/kql/functions/LedgerHealth.kql') }
  { name: 'function-LicenseChanges', content: loadTextContent('../../auditlake/kql/functions/LicenseChanges.kql') }
  { name: 'function-LogFlowGaps', content: loadTextContent('../../auditlake/kql/functions/LogFlowGaps.kql') }
  { name: 'function-MessagesRead', content: loadTextContent('../../auditlake/kql/functions/MessagesRead.kql') }
  { name: 'function-OfficeActivity', content: loadTextContent('../../auditlake/kql/functions/OfficeActivity.kql') }
  { name: 'function-SchemaDrift', content: loadTextContent('../../auditlake/kql/functions/SchemaDrift.kql') }
  { name: 'function-ServicePrincipalActivity', content: loadTextContent('../../auditlake/kql/functions/ServicePrincipalActivity.kql') }
  { name: 'function-ServicePrincipalSignInFailures', content: loadTextContent('../../auditlake/kql/functions/ServicePrincipalSignInFailures.kql') }
  { name: 'function-ServicePrincipalChangesWithIP', content: loadTextContent('../../auditlake/kql/functions/ServicePrincipalChangesWithIP.kql') }
  { name: 'function-CredentialThenSignIns', content: loadTextContent('../../auditlake/kql/functions/CredentialThenSignIns.kql') }
  { name: 'function-ManagedIdentityAccess', content: loadTextContent('../../auditlake/kql/functions/ManagedIdentityAccess.kql') }
  { name: 'function-ServicePrincipalNewAddresses', content: loadTextContent('../../auditlake/kql/functions/ServicePrincipalNewAddresses.kql') }
  { name: 'function-Completeness', content: loadTextContent('../../auditlake/kql/functions/Completeness.kql') }
  { name: 'function-CompletenessByDay', content: loadTextContent('../../auditlake/kql/functions/CompletenessByDay.kql') }
  { name: 'function-HealthChecks', content: loadTextContent('../../auditlake/kql/functions/HealthChecks.kql') }
  // Last, as it calls HealthChecks: the only script written here rather than loaded from a file.
  { name: 'function-HealthChecksForAlerts', content: healthChecksForAlerts }
]

// HealthChecks with this deployment's thresholds, as a function without parameters. Azure
// Monitor's cross-service adx() queries accept only functions without parameters (Microsoft:
// "Use non-parameterized functions"), so the alert rules cannot call HealthChecks(...) itself;
// they call this, and the check logic keeps its one definition in HealthChecks.kql.
// tests/contract/test_alerts.py renders it with the defaults and type-checks it.
var healthChecksForAlerts = '.create-or-alter function with (folder="AuditLake/Alerts", docstring="HealthChecks with the thresholds of the deployed alert rules (infra/modules/alerts.bicep)", skipvalidation="false")\nHealthChecksForAlerts() {\n    HealthChecks(real(${gapHours}), real(${nearExpiryHours}), ${failedRuns}, ${lookbackHours}h)\n}\n'

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

// Database Viewer: the identity of the alert rules runs HealthChecksForAlerts through adx().
// Viewer is the least ADX grants that can run a function; the identity has no credential and
// no code runs as it, only Azure Monitor's rule evaluation.
resource alertsViewer 'Microsoft.Kusto/clusters/databases/principalAssignments@2024-04-13' = if (!empty(alertsClientId)) {
  parent: database
  name: guid(database.id, alertsClientId, 'Viewer')
  properties: {
    principalId: alertsClientId
    principalType: 'App'
    role: 'Viewer'
    tenantId: ingestorTenantId
  }
  // One database change at a time.
  dependsOn: [
    ingestor
  ]
}

// Database Viewer: the analysts query the audit log and change nothing.
resource analysts 'Microsoft.Kusto/clusters/databases/principalAssignments@2024-04-13' = if (!empty(analystGroupObjectId)) {
  parent: database
  name: guid(database.id, analystGroupObjectId, 'Viewer')
  properties: {
    principalId: analystGroupObjectId
    principalType: 'Group'
    role: 'Viewer'
    tenantId: ingestorTenantId
  }
  dependsOn: [
    alertsViewer
  ]
}

// Database Admin: the administrators manage the database (policies, functions, principals).
resource admins 'Microsoft.Kusto/clusters/databases/principalAssignments@2024-04-13' = if (!empty(adminGroupObjectId)) {
  parent: database
  name: guid(database.id, adminGroupObjectId, 'Admin')
  properties: {
    principalId: adminGroupObjectId
    principalType: 'Group'
    role: 'Admin'
    tenantId: ingestorTenantId
  }
  dependsOn: [
    analysts
  ]
}

// Reader: Azure Monitor requires it on the cluster a rule's adx() query reaches, besides the
// database role above.
resource alertsClusterReader 'Microsoft.Authorization/roleAssignments@2022-04-01' = if (!empty(alertsPrincipalId)) {
  name: guid(cluster.id, alertsPrincipalId, 'acdd72a7-3385-48ef-bd42-f606fba81ae7')
  scope: cluster
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', 'acdd72a7-3385-48ef-bd42-f606fba81ae7')
    principalId: alertsPrincipalId
    principalType: 'ServicePrincipal'
  }
}

output databaseName string = database.name
// What the alert rules put inside adx(): the cluster URI and the database.
output healthFunctionName string = 'HealthChecksForAlerts'
output queryUri string = cluster.properties.uri
output ingestUri string = cluster.properties.dataIngestionUri
