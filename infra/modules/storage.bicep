// The function app's storage account: the host's own state, the content queue and its poison
// queue, the state tables, the dead-letter container and the Flex Consumption deployment
// container. Keys are off: everything reaches it with the managed identity. The dead-letter
// container is write-once (version-level immutability) and the blob, queue and table services
// send their logs to Log Analytics.

@description('Storage account name (3-24 lower-case letters and digits).')
@minLength(3)
@maxLength(24)
param name string

@description('Azure region.')
param location string

@description('Tags applied to the account.')
param tags object = {}

@description('Replication of the account.')
@allowed(['Standard_LRS', 'Standard_ZRS', 'Standard_GRS', 'Standard_GZRS'])
param skuName string = 'Standard_LRS'

@description('The queue between the timer and the workers (app setting CONTENT_QUEUE).')
param contentQueueName string

@description('Prefix of the state tables (app setting STATE_TABLE_PREFIX).')
param stateTablePrefix string

@description('Container that keeps raw content and messages that could not be processed (DEADLETTER_CONTAINER).')
param deadletterContainerName string

@description('Container Flex Consumption deploys the app package to.')
param deploymentContainerName string

@description('Principal id of the managed identity that gets data-plane roles on the account.')
param principalId string

@description('Days every version of a dead-letter blob stays immutable (time-based retention, counted from the version\'s creation).')
@minValue(1)
@maxValue(146000)
param deadletterRetentionDays int

@description('True once the dead-letter retention policy has been locked (see deadletterRetention below): Resource Manager only creates or updates unlocked policies, so the template then leaves it alone.')
param deadletterRetentionLocked bool = false

@description('Resource id of the Log Analytics workspace that receives the services\' logs and metrics.')
param workspaceId string

// The Functions host appends this to a queue's name for messages past maxDequeueCount.
var poisonQueueName = '${contentQueueName}-poison'
// Blobs the platform rewrites: the containers the Functions host creates for itself (leases,
// timer schedule status, keys) and the deployment package.
var platformBlobPrefixes = [
  'azure-webjobs-hosts/'
  'azure-webjobs-secrets/'
  '${deploymentContainerName}/'
]
var stateTables = [
  '${stateTablePrefix}Checkpoints'
  '${stateTablePrefix}Ledger'
  '${stateTablePrefix}Runs'
]

resource account 'Microsoft.Storage/storageAccounts@2023-05-01' = {
  // checkov:skip=CKV_AZURE_35: Flex Consumption without a virtual network reaches storage over its public endpoint; access is Entra ID only (shared keys are off)
  // checkov:skip=CKV_AZURE_59: same reason: no private endpoint without a virtual network
  // checkov:skip=CKV_AZURE_206: the replication is a parameter (skuName); LRS is the cheap default for data that is re-listable for 7 days and lands in ADX
  name: name
  location: location
  tags: tags
  kind: 'StorageV2'
  sku: {
    name: skuName
  }
  properties: {
    accessTier: 'Hot'
    allowBlobPublicAccess: false
    allowCrossTenantReplication: false
    allowSharedKeyAccess: false
    defaultToOAuthAuthentication: true
    isLocalUserEnabled: false
    isSftpEnabled: false
    minimumTlsVersion: 'TLS1_2'
    publicNetworkAccess: 'Enabled'
    supportsHttpsTrafficOnly: true
    networkAcls: {
      bypass: 'AzureServices'
      defaultAction: 'Allow'
    }
    encryption: {
      keySource: 'Microsoft.Storage'
      requireInfrastructureEncryption: true
      services: {
        blob: {
          enabled: true
          keyType: 'Account'
        }
        file: {
          enabled: true
          keyType: 'Account'
        }
        queue: {
          enabled: true
          keyType: 'Account'
        }
        table: {
          enabled: true
          keyType: 'Account'
        }
      }
    }
  }
}

resource blobService 'Microsoft.Storage/storageAccounts/blobServices@2023-05-01' = {
  parent: account
  name: 'default'
  properties: {
    // Every overwrite or delete keeps the previous state as a version; version-level
    // immutability on the dead-letter container (below) requires it.
    isVersioningEnabled: true
    deleteRetentionPolicy: {
      enabled: true
      days: 7
    }
    containerDeleteRetentionPolicy: {
      enabled: true
      days: 7
    }
  }
}

resource deploymentContainer 'Microsoft.Storage/storageAccounts/blobServices/containers@2023-05-01' = {
  parent: blobService
  name: deploymentContainerName
  properties: {
    publicAccess: 'None'
  }
}

// The dead letters are the only raw copy of content the API no longer serves after 7 days, so
// they are write-once: version-level immutability with a default time-based retention policy.
// Creating a blob works as before. Writing a name that exists again keeps the earlier copy as
// an immutable version instead of replacing it, and deleting or changing a protected version
// fails whatever role the caller has. Version level rather than container level: a
// container-level policy refuses a second write of the same name outright, so a writer that
// keeps a blob's content again after a later failed attempt would start failing. The property
// can only be set when the container is created: a container made by an earlier deployment
// has to be migrated first (Microsoft's "Migrate an existing container to support
// version-level immutability"), or this deployment fails on it.
resource deadletterContainer 'Microsoft.Storage/storageAccounts/blobServices/containers@2023-05-01' = {
  parent: blobService
  name: deadletterContainerName
  properties: {
    publicAccess: 'None'
    immutableStorageWithVersioning: {
      enabled: true
    }
  }
}

// The container's default policy, inherited by every version written to it. The app writes
// block blobs whole, never appends, so protected append writes stay off. The policy is created
// unlocked: it already blocks deletes and changes, but an unlocked policy can be shortened or
// removed through Resource Manager, by the identity too (Storage Blob Data Owner includes the
// containers' management actions); that changes only versions written afterwards, each version
// keeps the policy it inherited. Lock it once the retention is settled (az storage container
// immutability-policy lock; irreversible) and deploy with deadletterRetentionLocked true from
// then on: a locked policy can only be extended.
resource deadletterRetention 'Microsoft.Storage/storageAccounts/blobServices/containers/immutabilityPolicies@2023-05-01' = if (!deadletterRetentionLocked) {
  parent: deadletterContainer
  name: 'default'
  properties: {
    immutabilityPeriodSinceCreationInDays: deadletterRetentionDays
    allowProtectedAppendWrites: false
  }
}

// Versioning applies to the whole account: the host rewrites its timer status every run and
// the deployment package on every deploy. Their previous versions are of no use after a day;
// the dead-letter container is deliberately not listed.
resource lifecycle 'Microsoft.Storage/storageAccounts/managementPolicies@2023-05-01' = {
  parent: account
  name: 'default'
  properties: {
    policy: {
      rules: [
        {
          name: 'expire-host-versions'
          enabled: true
          type: 'Lifecycle'
          definition: {
            filters: {
              blobTypes: [
                'blockBlob'
              ]
              prefixMatch: platformBlobPrefixes
            }
            actions: {
              version: {
                delete: {
                  daysAfterCreationGreaterThan: 1
                }
              }
            }
          }
        }
      ]
    }
  }
  dependsOn: [
    blobService
  ]
}

resource queueService 'Microsoft.Storage/storageAccounts/queueServices@2023-05-01' = {
  parent: account
  name: 'default'
}

resource contentQueue 'Microsoft.Storage/storageAccounts/queueServices/queues@2023-05-01' = {
  parent: queueService
  name: contentQueueName
}

resource poisonQueue 'Microsoft.Storage/storageAccounts/queueServices/queues@2023-05-01' = {
  parent: queueService
  name: poisonQueueName
}

resource tableService 'Microsoft.Storage/storageAccounts/tableServices@2023-05-01' = {
  parent: account
  name: 'default'
}

resource tables 'Microsoft.Storage/storageAccounts/tableServices/tables@2023-05-01' = [for table in stateTables: {
  parent: tableService
  name: table
}]

// What the identity's blob role may not do in the dead-letter container: delete a blob or one
// of its versions, purge soft-deleted ones, set or remove a version's immutability policy (on
// an unlocked policy that is the way to a delete), or run privileged (superuser) operations.
// Creating, overwriting (a new version) and reading stay allowed. A role assignment condition
// (Azure ABAC) on the data actions: true, so allowed, for any other action and in any other
// container.
var deadletterDeniedActions = [
  '!(ActionMatches{\'Microsoft.Storage/storageAccounts/blobServices/containers/blobs/delete\'})'
  '!(ActionMatches{\'Microsoft.Storage/storageAccounts/blobServices/containers/blobs/deleteBlobVersion/action\'})'
  '!(ActionMatches{\'Microsoft.Storage/storageAccounts/blobServices/containers/blobs/permanentDelete/action\'})'
  '!(ActionMatches{\'Microsoft.Storage/storageAccounts/blobServices/containers/blobs/immutableStorage/runAsSuperUser/action\'})'
  '!(ActionMatches{\'Microsoft.Storage/storageAccounts/blobServices/containers/blobs/runAsSuperUser/action\'})'
]
var deadletterGuard = '((${join(deadletterDeniedActions, ' AND ')}) OR (@Resource[Microsoft.Storage/storageAccounts/blobServices/containers:name] StringNotEquals \'${deadletterContainerName}\'))'

// Storage Blob Data Owner on the account: what Microsoft documents for an identity-based
// AzureWebJobsStorage (the host's leases, timer schedule status and keys, in containers it
// creates itself); it also covers the Flex Consumption deployment package. The app's own code
// uses the same identity and connection, so a narrower role scoped to the dead-letter
// container would add nothing while this one exists. Instead the dead letters are protected
// twice: the condition above takes the destructive blob actions away from this assignment in
// that container, and the container's immutability policy refuses them for any caller.
resource blobDataOwner 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(account.id, principalId, 'b7e6dc6d-f1e8-4753-8033-0f276bb0955b')
  scope: account
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', 'b7e6dc6d-f1e8-4753-8033-0f276bb0955b')
    principalId: principalId
    principalType: 'ServicePrincipal'
    description: 'Functions host storage and deployment package; no deletes in the dead-letter container'
    conditionVersion: '2.0'
    condition: deadletterGuard
  }
}

// Storage Queue Data Contributor: the timer enqueues, the queue triggers receive and delete.
resource queueDataContributor 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(account.id, principalId, '974c5e8b-45b9-4653-ba55-5f855dd0fb88')
  scope: account
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', '974c5e8b-45b9-4653-ba55-5f855dd0fb88')
    principalId: principalId
    principalType: 'ServicePrincipal'
  }
}

// Storage Table Data Contributor: checkpoints, the content ledger and the run log.
resource tableDataContributor 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(account.id, principalId, '0a9a7e1f-b9d0-4cc4-a60d-0319b160aaa3')
  scope: account
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', '0a9a7e1f-b9d0-4cc4-a60d-0319b160aaa3')
    principalId: principalId
    principalType: 'ServicePrincipal'
  }
}

// Logs (reads, writes, deletes) and transaction metrics of each service, to Log Analytics.
var serviceLogs = [
  {
    category: 'StorageRead'
    enabled: true
  }
  {
    category: 'StorageWrite'
    enabled: true
  }
  {
    category: 'StorageDelete'
    enabled: true
  }
]
var serviceMetrics = [
  {
    category: 'Transaction'
    enabled: true
  }
]

resource blobDiagnostics 'Microsoft.Insights/diagnosticSettings@2021-05-01-preview' = {
  name: 'to-log-analytics'
  scope: blobService
  properties: {
    workspaceId: workspaceId
    logs: serviceLogs
    metrics: serviceMetrics
  }
}

resource queueDiagnostics 'Microsoft.Insights/diagnosticSettings@2021-05-01-preview' = {
  name: 'to-log-analytics'
  scope: queueService
  properties: {
    workspaceId: workspaceId
    logs: serviceLogs
    metrics: serviceMetrics
  }
}

resource tableDiagnostics 'Microsoft.Insights/diagnosticSettings@2021-05-01-preview' = {
  name: 'to-log-analytics'
  scope: tableService
  properties: {
    workspaceId: workspaceId
    logs: serviceLogs
    metrics: serviceMetrics
  }
}

output name string = account.name
output blobEndpoint string = account.properties.primaryEndpoints.blob
output queueEndpoint string = account.properties.primaryEndpoints.queue
output tableEndpoint string = account.properties.primaryEndpoints.table
output contentQueueName string = contentQueue.name
output deadletterContainerName string = deadletterContainer.name
output deploymentContainerName string = deploymentContainer.name
