// Entra ID sign-in and audit logs into ADX without code (deployed at the cluster's resource group,
// after the database's KQL scripts): an Event Hubs namespace and hub that the tenant-level
// diagnostic setting (infra/entra-diagnostics.bicep) streams to, a consumer group of ADX's own,
// and the database's Event Hub data connection into EntraActivityRaw, which the transactional
// update policies of infra/kql/entra.kql expand into SigninLogs, AADNonInteractiveUserSignInLogs,
// AADServicePrincipalSignInLogs, AADManagedIdentitySignInLogs and AuditLogs.

@description('Name of the cluster the database lives in (in this module\'s resource group); it needs a system-assigned identity.')
param clusterName string

@description('Database that holds EntraActivityRaw, its mapping and the update policies (created by infra/kql/entra.kql).')
param databaseName string

@description('Event Hubs namespace name (6-50 letters, digits and hyphens, starting with a letter).')
@minLength(6)
@maxLength(50)
param namespaceName string

@description('Tags applied to the namespace.')
param tags object = {}

@description('Event hub name; the diagnostic setting names it (eventHubName).')
param eventHubName string = 'entra-activity'

// Standard cannot change the partition count after creation, and partitions cost nothing
// there: size for the peak. Non-interactive and service-principal sign-ins can be 5-10 times
// the interactive ones, a sign-in record is ~11.5 KB, and one partition takes ~1 MB/s.
@description('Partitions of the hub (fixed at creation on Standard). ADX reads them in parallel.')
@minValue(1)
@maxValue(32)
param partitionCount int = 8

// The hub's retention bounds what a data connection recreated with retrievalStartDate can
// still read: Standard keeps events up to 7 days.
@description('Days the hub keeps events (Standard: at most 7).')
@minValue(1)
@maxValue(7)
param retentionDays int = 7

@description('Throughput units of the namespace (1 TU: 1 MB/s or 1000 events/s in).')
@minValue(1)
@maxValue(40)
param throughputUnits int = 2

@description('Throughput units auto-inflate may grow the namespace to under a burst.')
@minValue(1)
@maxValue(40)
param maximumThroughputUnits int = 10

@description('ISO 8601 time from which a new data connection also reads events already in the hub (bounded by the retention); empty: only events enqueued after the connection exists.')
param retrievalStartDate string = ''

// The names entra.kql creates; the data connection refuses a table or mapping that is not there.
var rawTableName = 'EntraActivityRaw'
var rawMappingName = 'EntraActivityRawMapping'

resource cluster 'Microsoft.Kusto/clusters@2024-04-13' existing = {
  name: clusterName
}

resource database 'Microsoft.Kusto/clusters/databases@2024-04-13' existing = {
  parent: cluster
  name: databaseName
}

// Next to the cluster: the data connection reads every event across regions otherwise.
resource namespace 'Microsoft.EventHub/namespaces@2024-01-01' = {
  name: namespaceName
  location: cluster.location
  tags: tags
  sku: {
    name: 'Standard'
    tier: 'Standard'
    capacity: throughputUnits
  }
  properties: {
    minimumTlsVersion: '1.2'
    // Shared access keys stay on for one reason: an Entra diagnostic setting authenticates to
    // the hub only with an authorization rule (eventHubAuthorizationRuleId); it has no managed
    // identity option. ADX reads with the cluster's managed identity and Entra ID instead.
    disableLocalAuth: false
    isAutoInflateEnabled: true
    maximumThroughputUnits: maximumThroughputUnits
    publicNetworkAccess: 'Enabled'
  }
}

resource hub 'Microsoft.EventHub/namespaces/eventhubs@2024-01-01' = {
  parent: namespace
  name: eventHubName
  properties: {
    partitionCount: partitionCount
    messageRetentionInDays: retentionDays
  }
}

// One reader per consumer group: ADX keeps its own offsets here, apart from any other reader.
resource adxConsumerGroup 'Microsoft.EventHub/namespaces/eventhubs/consumergroups@2024-01-01' = {
  parent: hub
  name: 'adx'
  properties: {
    userMetadata: 'Azure Data Explorer data connection ${clusterName}/${databaseName}'
  }
}

// The diagnostic setting's only credential: Send, nothing else. It cannot read the logs back
// (Listen) nor create, change or delete hubs (Manage). Manage is needed only when a diagnostic
// setting names no hub and creates its own; entra-diagnostics.bicep always names this one.
// Namespace level, as Entra's diagnostic settings choose a namespace policy.
resource diagnosticsSendRule 'Microsoft.EventHub/namespaces/authorizationRules@2024-01-01' = {
  parent: namespace
  name: 'entra-diagnostics-send'
  properties: {
    rights: [
      'Send'
    ]
  }
}

// Azure Event Hubs Data Receiver: the cluster's system-assigned identity reads this hub (and
// only this hub) for the data connection below.
resource clusterReceiver 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(hub.id, cluster.id, 'a638d3c7-ab3a-418d-83e6-5f17a39d4fde')
  scope: hub
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', 'a638d3c7-ab3a-418d-83e6-5f17a39d4fde')
    principalId: cluster.identity.principalId
    principalType: 'ServicePrincipal'
  }
}

resource dataConnection 'Microsoft.Kusto/clusters/databases/dataConnections@2024-04-13' = {
  parent: database
  name: 'entra-activity'
  location: cluster.location
  kind: 'EventHub'
  properties: {
    eventHubResourceId: hub.id
    consumerGroup: adxConsumerGroup.name
    tableName: rawTableName
    mappingRuleName: rawMappingName
    // Each event is one object {"records": [...]}, whose mapping path $.records fills the
    // Records column. MULTIJSON reads a JSON object whatever its line breaks; JSON (JSON Lines)
    // would need the whole object on one line.
    dataFormat: 'MULTIJSON'
    // Diagnostic settings send plain JSON.
    compression: 'None'
    // Every event goes to this database: nothing in the payload may route it elsewhere.
    databaseRouting: 'Single'
    // The cluster's system-assigned identity: its resource id is the cluster's. No key of the
    // namespace is read into the template or stored by ADX.
    managedIdentityResourceId: cluster.id
    retrievalStartDate: empty(retrievalStartDate) ? null : retrievalStartDate
  }
  // The identity must hold its role before ADX validates the connection.
  dependsOn: [
    clusterReceiver
  ]
}

// What the tenant-level deployment (infra/entra-diagnostics.bicep) takes.
output authorizationRuleId string = diagnosticsSendRule.id
output eventHubName string = hub.name
output namespaceName string = namespace.name
output eventHubResourceId string = hub.id
output dataConnectionName string = dataConnection.name
