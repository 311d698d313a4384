// A new Azure Data Explorer cluster (skipped when main.bicep is given an existing one), trusting
// only its own tenant and sending its logs and metrics to Log Analytics.

@description('Cluster name (4-22 lower-case letters and digits, starting with a letter).')
@minLength(4)
@maxLength(22)
param name string

@description('Azure region.')
param location string

@description('Tags applied to the cluster.')
param tags object = {}

@description('Cluster SKU. The Dev SKU has no SLA and one node; use e.g. Standard_E2ads_v5 with capacity 2 in production.')
param skuName string

@description('Number of instances.')
@minValue(1)
param capacity int

@description('Allow streaming ingestion (needed when ADX_STREAMING is true).')
param enableStreamingIngest bool

@description('Resource id of the Log Analytics workspace that receives the cluster\'s logs and metrics.')
param workspaceId string

resource cluster 'Microsoft.Kusto/clusters@2024-04-13' = {
  name: name
  location: location
  tags: tags
  sku: {
    name: skuName
    tier: startsWith(skuName, 'Dev(No SLA)') ? 'Basic' : 'Standard'
    capacity: capacity
  }
  identity: {
    type: 'SystemAssigned'
  }
  properties: {
    enableStreamingIngest: enableStreamingIngest
    enableDiskEncryption: true
    // Infrastructure (double) encryption can only be chosen when the cluster is created.
    enableDoubleEncryption: true
    // Audit data has to arrive whether or not anyone is querying: never stop the cluster.
    enableAutoStop: false
    enablePurge: false
    publicNetworkAccess: 'Enabled'
    // Principals of other Entra ID tenants may not authenticate at all. Left out, the property
    // defaults to [{ value: '*' }], every tenant; an empty array means only the cluster's own
    // tenant, which is where the app's managed identity and the operators live.
    trustedExternalTenants: []
  }
}

// Ingestion outcomes (succeeded, failed, batching), commands, queries and the journal of
// metadata changes: what a lost or late record, or a changed policy, leaves behind.
resource diagnostics 'Microsoft.Insights/diagnosticSettings@2021-05-01-preview' = {
  name: 'to-log-analytics'
  scope: cluster
  properties: {
    workspaceId: workspaceId
    // Resource-specific tables (FailedIngestion, SucceededIngestion, ADXCommand, ...) rather than
    // AzureDiagnostics: the IngestionFailed alert rule (alerts.bicep) queries FailedIngestion.
    logAnalyticsDestinationType: 'Dedicated'
    logs: [
      {
        category: 'SucceededIngestion'
        enabled: true
      }
      {
        category: 'FailedIngestion'
        enabled: true
      }
      {
        category: 'IngestionBatching'
        enabled: true
      }
      {
        category: 'Command'
        enabled: true
      }
      {
        category: 'Query'
        enabled: true
      }
      {
        category: 'Journal'
        enabled: true
      }
    ]
    metrics: [
      {
        category: 'AllMetrics'
        enabled: true
      }
    ]
  }
}

output name string = cluster.name
output uri string = cluster.properties.uri
output dataIngestionUri string = cluster.properties.dataIngestionUri
